"""Batch-signed envelopes: one signature over a Merkle root for a wave's desired states,
each envelope checked from its own payload, index and path; and a deployment that sends
them to agents that take them and single signatures to those that do not."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, Signature

from edgefleet.contract import MessageError, Signed, batch_leaves

SIGNER = CryptoSigner(Ed25519PrivateKey.generate())


def _envelopes(payloads: list[bytes]) -> list[Signed]:
    message, paths = batch_leaves(payloads)
    sig = SIGNER.sign(message)
    return [Signed(payload=base64.b64encode(p).decode(),
                   signatures=[{"keyid": sig.keyid, "sig": sig.signature}],
                   batch_index=i, batch_path=path)
            for i, (p, path) in enumerate(zip(payloads, paths, strict=True))]


def _verifies(envelope: Signed) -> bool:
    try:
        SIGNER.public_key.verify_signature(Signature.from_dict(dict(envelope.signatures[0])),
                                           envelope.signed_bytes())
    except UnverifiedSignatureError:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=2, max_size=40))
def test_every_payload_of_a_batch_verifies_from_its_own_envelope(payloads):
    message, paths = batch_leaves(payloads)
    depth = (len(payloads) - 1).bit_length()
    assert all(len(p) == depth for p in paths)  # log2 of the padded batch
    envelopes = _envelopes(payloads)
    for e in envelopes:
        again = Signed.decode(e.encode())  # as it travels
        assert again.signed_bytes() == message and _verifies(again)
        assert again.inner() in payloads


def test_a_changed_payload_index_or_path_no_longer_verifies():
    payloads = [f"state for dev-{i}".encode() for i in range(5)]
    envelopes = _envelopes(payloads)
    e = envelopes[2]
    assert _verifies(e)
    other = base64.b64encode(payloads[3]).decode()  # another device's state, same leaf
    assert not _verifies(dataclasses.replace(e, payload=other))
    assert not _verifies(dataclasses.replace(e, batch_index=3))  # the leaf moved
    flipped = list(e.batch_path)
    flipped[0] = ("0" if flipped[0][0] != "0" else "1") + flipped[0][1:]
    assert not _verifies(dataclasses.replace(e, batch_path=flipped))
    assert not _verifies(dataclasses.replace(e, batch_path=e.batch_path[:-1], batch_index=0))
    # a batch's signature is not one over a payload: an envelope without the path fails
    assert not _verifies(dataclasses.replace(e, batch_path=[], batch_index=0))


@pytest.mark.parametrize("fields, what", [
    ({"batch_path": ["zz" * 32]}, "batch_path"),
    ({"batch_path": ["ab" * 32] * 33, "batch_index": 0}, "batch_path"),
    ({"batch_path": ["ab" * 32], "batch_index": 2}, "batch_index"),
    ({"batch_path": [], "batch_index": 1}, "batch_index"),
])
def test_a_malformed_batch_envelope_is_refused_naming_the_field(fields, what):
    good = _envelopes([b"a", b"b"])[0].to_dict()
    with pytest.raises(MessageError, match=what):
        Signed.from_dict({**good, **fields})


@pytest.mark.parametrize("n", [0, 1])
def test_a_batch_of_fewer_than_two_is_an_error(n):
    with pytest.raises(ValueError, match="at least two"):
        batch_leaves([b"x"] * n)


def test_a_wave_gets_batch_signed_states_where_agents_take_them(controller, make_fleet,
                                                                monkeypatch):
    """Three agents: two say they take batch-signed envelopes (as agents do), one is made
    to look like an older agent (no ``features`` in its stored birth). Every device is
    sent a state it verifies, and the deployment succeeds."""
    from _support import register_digits, wait_deployment, wait_devices_known

    from edgefleet.contract import DeviceTopic

    fleet = make_fleet(3)
    wait_devices_known(controller, fleet.ids)
    older = fleet.ids[0]
    hw = dict(controller.store.get_device(older)["hw"])
    hw.pop("features")
    controller.store.upsert_device(older, hw=hw)
    sent: dict[str, Signed] = {}
    publish = controller.link.publish

    def noting(device, suffix, payload, **kw):
        if suffix == DeviceTopic.DESIRED:
            sent[device] = Signed.decode(payload)
        return publish(device, suffix, payload, **kw)

    monkeypatch.setattr(controller.link, "publish", noting)
    reads: list[list[str]] = []
    devices_hw = controller.store.devices_hw
    monkeypatch.setattr(controller.store, "devices_hw",
                        lambda ids: reads.append(list(ids)) or devices_hw(ids))
    dep = wait_deployment(controller, controller.deploy(
        "digits", register_digits(controller)["version"])["id"])
    assert dep["state"] == "succeeded"
    # the rows the wave's bundles were chosen from also say who takes batch signatures
    assert [sorted(r) for r in reads] == [sorted(fleet.ids)]
    assert sent[older].batch_path == []  # one signature over its own payload
    batched = [sent[d] for d in fleet.ids[1:]]
    assert all(len(e.batch_path) == 1 for e in batched)  # two leaves: one sibling each
    assert batched[0].signatures == batched[1].signatures  # one signature for both
    assert sorted(e.batch_index for e in batched) == [0, 1]
    assert all(a.guard.rejected == {} for a in fleet.agents.values())
