#!/bin/sh
# First-boot install of the edgefleet agent, run as root by edgefleet-install.service.
#
# Creates the edgefleet system user, a Python venv at /opt/edgefleet and installs
# edgefleet's [agent] extra into it, then starts edgefleet-agent.service. Idempotent:
# it does nothing once /opt/edgefleet/.installed exists (the unit then skips itself
# too); a failed run leaves no marker and the next run starts over.
#
# The values between @ signs are filled in by `edgefleet image build`.
set -eu

REQUIREMENT=@REQUIREMENT@
PYTHONS=@PYTHONS@
APT_PACKAGES=@APT_PACKAGES@
PREFIX="${EDGEFLEET_PREFIX:-/opt/edgefleet}"  # overridden by tests only
MARKER="$PREFIX/.installed"

if [ -e "$MARKER" ]; then
    echo "edgefleet agent already installed: $(cat "$MARKER")"
    exit 0
fi

# The user and the ownership of /etc/edgefleet files, in case systemd-sysusers or
# systemd-tmpfiles did not process them at this boot.
systemd-sysusers /usr/lib/sysusers.d/edgefleet.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/edgefleet.conf

find_python() {
    for candidate in $PYTHONS; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' \
                >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! PY=$(find_python); then
    if [ -n "$APT_PACKAGES" ]; then
        echo "no Python >= 3.11 with venv among: $PYTHONS; installing $APT_PACKAGES"
        apt-get update
        # shellcheck disable=SC2086  # a list of package names
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $APT_PACKAGES
    fi
    if ! PY=$(find_python); then
        echo "edgefleet needs Python >= 3.11 with the venv module; tried: $PYTHONS" >&2
        exit 1
    fi
fi

rm -rf "$PREFIX"  # what an interrupted run left behind
"$PY" -m venv "$PREFIX"
"$PREFIX/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --no-input \
    --prefer-binary "$REQUIREMENT"
"$PREFIX/bin/edgefleet" --help >/dev/null
"$PREFIX/bin/python" -c 'import edgefleet; print(edgefleet.__version__)' >"$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
sync
echo "edgefleet agent $(cat "$MARKER") installed in $PREFIX with $PY"

# At boot the agent's start job waits for this unit; after a failed first attempt it has
# already been skipped, so start it from here (a no-op when it is starting anyway).
systemctl --no-block start edgefleet-agent.service
