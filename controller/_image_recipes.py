"""The built-in image recipes: what ``firmware-images/`` holds, embedded so an
installed controller can build images without a checkout (``tests/test_images.py``
fails if the two drift apart)."""

from __future__ import annotations

from typing import Any

__all__ = ["BUILTIN_META", "COMMON_FILES", "RPI_AGENT_UNIT", "UNIT_CHANGES"]


BUILTIN_META: dict[str, dict[str, Any]] = {
    "rpi-os-arm64": {
        "target": "rpi-os-arm64",
        "description": "Raspberry Pi OS (64-bit, Debian 12 bookworm), Raspberry Pi 4/5",
        "hardware_class": "auto",
        "pythons": ["python3"],
        "apt_packages": ["python3-venv"],
        "extras": ["agent", "tflite"],
    },
    "jetson-l4t": {
        "target": "jetson-l4t",
        "description": "NVIDIA Jetson Linux 36 (JetPack 6, Ubuntu 22.04), Jetson Orin",
        "hardware_class": "auto",
        "pythons": ["python3.12", "python3.11", "python3"],
        "apt_packages": ["python3.11", "python3.11-venv"],
    },
}

COMMON_FILES = {
    "edgefleet-install.service": """\
# First-boot install of the edgefleet agent: /usr/lib/edgefleet/install-agent.sh.
# Skipped once /opt/edgefleet/.installed exists; retried every minute until it works.
[Unit]
Description=Install the edgefleet agent into /opt/edgefleet
Wants=network-online.target
After=network-online.target time-sync.target
After=systemd-sysusers.service systemd-tmpfiles-setup.service
Before=edgefleet-agent.service
ConditionPathExists=!/opt/edgefleet/.installed

[Service]
Type=oneshot
ExecStart=/usr/lib/edgefleet/install-agent.sh
# pip may need a while on a slow link or SD card.
TimeoutStartSec=1h
Restart=on-failure
RestartSec=60

[Install]
WantedBy=multi-user.target
""",
    "install-agent.sh": r"""#!/bin/sh
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
""",
    "edgefleet.sysusers": """\
# The edgefleet agent's system user (see sysusers.d(5)). The uid is allocated on
# the device; tmpfiles.d/edgefleet.conf gives this user the files the image ships.
u edgefleet - "edgefleet agent" /var/lib/edgefleet /usr/sbin/nologin
""",
    "edgefleet.tmpfiles": """\
# Ownership and modes of the files the image ships for the edgefleet agent (see
# tmpfiles.d(5)). The image cannot know the uid systemd-sysusers allocates on the
# device, so these are (re)applied at every boot and by the first-boot install.
z /etc/edgefleet/agent.toml   0640 root      edgefleet -
z /etc/edgefleet/claim-token  0600 edgefleet edgefleet -
z /etc/edgefleet/root.json    0644 root      root      -
""",
}

RPI_AGENT_UNIT = """\
# edgefleet agent, Raspberry Pi OS (arm64). Installed by the edgefleet image overlay.
# Runs as the unprivileged "edgefleet" user in a read-only view of the system: it
# writes only its state directory (/var/lib/edgefleet) and its private /tmp.
[Unit]
Description=edgefleet agent
Wants=network-online.target edgefleet-install.service
After=network-online.target time-sync.target edgefleet-install.service
# Installed by edgefleet-install.service on first boot; that unit starts this one
# itself when the install succeeds on a retry.
ConditionPathExists=/opt/edgefleet/.installed
# A crash loop (e.g. an invalid agent.toml) stops after 5 starts in 10 minutes;
# `systemctl reset-failed edgefleet-agent` and a start, or a reboot, try again.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
# READY=1 once the local endpoint serves; WATCHDOG=1 every 15 s while the agent's
# worker threads run. Missing pings make systemd abort and restart the agent.
Type=notify
NotifyAccess=main
WatchdogSec=30
ExecStart=/opt/edgefleet/bin/edgefleet agent run --config /etc/edgefleet/agent.toml
Restart=on-failure
RestartSec=5
TimeoutStartSec=120
TimeoutStopSec=30

User=edgefleet
Group=edgefleet
StateDirectory=edgefleet
StateDirectoryMode=0750
UMask=0077

# Sandbox.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
RemoveIPC=yes
# CPU inference needs no device nodes.
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# onnxruntime's CPU execution provider runs precompiled kernels and generates no
# code at run time, so writable+executable memory can be refused.
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
# A call outside the filter fails with EPERM instead of killing the agent.
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""

# How the Jetson agent unit differs: (Raspberry Pi text, Jetson text).
UNIT_CHANGES: dict[str, tuple[tuple[str, str], ...]] = {"jetson-l4t": (
    ("""\
# edgefleet agent, Raspberry Pi OS (arm64). Installed by the edgefleet image overlay.
""",
     """\
# edgefleet agent, NVIDIA Jetson Linux (L4T). Installed by the edgefleet image overlay.
"""),
    ("""\
# CPU inference needs no device nodes.
PrivateDevices=yes
""",
     """\
# CUDA and TensorRT open the GPU device nodes (/dev/nvmap, /dev/nvhost-*, ...), which
# stock L4T makes accessible to the "video" group: check `ls -l /dev/nv*` on your
# release. No device allow-list: the node names differ between L4T releases and
# modules, and a wrong list shuts the GPU out.
PrivateDevices=no
SupplementaryGroups=video
"""),
    ("""\
ProtectClock=yes
""",
     """\
# ProtectClock=yes would imply DeviceAllow=char-rtc, a device allow-list that shuts
# out the GPU nodes. No capabilities and ~@privileged (holding @clock) below keep the
# clock safe without it.
ProtectClock=no
"""),
    ("""\
# onnxruntime's CPU execution provider runs precompiled kernels and generates no
# code at run time, so writable+executable memory can be refused.
MemoryDenyWriteExecute=yes
""",
     """\
# The CUDA driver JIT-compiles PTX and TensorRT builds engines at run time; both
# need writable+executable memory.
MemoryDenyWriteExecute=no
"""),
)}
