"""The agent's command guard while its trusted root file is briefly absent.

python-tuf re-creates ``root.json`` (remove, then link) each time an updater opens the
metadata; a signed command arriving in that instant must still be verified with the root
already loaded, while a guard that never loaded a root refuses everything.
"""

from __future__ import annotations

import base64
import shutil
import time
import uuid

import pytest

from edgefleet.agent.commands import CommandGuard
from edgefleet.contract import Command, SignatureError, Signed
from edgefleet.contract.clock import SystemClock
from edgefleet.controller import init_keys
from edgefleet.controller.keys import load_signers


def _signed(key_dir, device: str, *, signers=None) -> bytes:
    now = time.time()
    cmd = Command(id=uuid.uuid4().hex, action="rebirth", issued_at=now, expires_at=now + 60,
                  device=device).encode()
    signers = signers if signers is not None else load_signers(key_dir)["command"]
    sigs = [s.sign(cmd) for s in signers]
    return Signed(payload=base64.b64encode(cmd).decode(),
                  signatures=[{"keyid": g.keyid, "sig": g.signature} for g in sigs]).encode()


def _guard(tmp_path, root) -> CommandGuard:
    return CommandGuard("cam-1", root, tmp_path / "seen.json", SystemClock(), max_age_s=300)


def test_a_root_already_loaded_stays_in_force_while_the_file_is_re_created(tmp_path,
                                                                            trust_root):
    root = tmp_path / "device-root.json"
    shutil.copy(trust_root, root)
    guard = _guard(tmp_path, root)
    assert guard.open(_signed(trust_root.parent, "cam-1"), Command).action == "rebirth"

    root.unlink()  # the instant between python-tuf's remove and link
    assert guard.open(_signed(trust_root.parent, "cam-1"), Command).action == "rebirth"
    # still verified with the loaded keys, not waved through
    other = tmp_path / "other-keys"
    init_keys(other)
    with pytest.raises(SignatureError) as forged:
        guard.open(_signed(other, "cam-1"), Command)
    assert forged.value.reason == "unknown_command_key"


def test_a_guard_that_never_loaded_a_root_fails_closed(tmp_path, trust_root):
    guard = _guard(tmp_path, tmp_path / "missing-root.json")
    with pytest.raises(SignatureError) as refused:
        guard.open(_signed(trust_root.parent, "cam-1"), Command)
    assert refused.value.reason == "no_trusted_root"
