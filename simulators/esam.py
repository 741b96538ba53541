"""A simulated ESAM (the meter's security chip) and a simulated encryption machine (密码机).

**Simulated, not the State-Grid algorithm.** The real ESAM commands and key hierarchy are not
public. This scheme has the same *shape* — per-meter keys diversified from a master key and the
meter number, identity authentication that opens a time-limited session, MACs over the top-up
fields — built from SM4 (GB/T 32907) as implemented by `cryptography`, so forged or replayed
MACs are rejected the way a meter would reject them:

* meter key   ``K_m = SM4(MK, D || ~D)`` with ``D = 00 00 || meter number`` (8 bytes, the
  diversification factor of the 03H identity-auth request);
* identity auth: the machine draws random-1 (8 bytes) and sends ciphertext-1 =
  ``SM4(K_m, R1 || D)[:8]``; the meter checks it with its own key and answers random-2 (4 bytes);
* session key ``K_s = SM4(K_m, R1 || R2 || "SESS")``; a session lasts 5 minutes by default;
* MAC = the first 4 bytes of SM4-CBC-MAC(K_s, label || fields), zero IV, 80 00.. padding.

A MAC made for another session, another meter, or other fields fails (SERR "ESAM failed").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["EncryptionMachine", "Esam", "Session", "diversification", "meter_key"]

DEFAULT_SESSION_MINUTES = 5
LABEL_TOP_UP = b"TOPUP"
LABEL_CUSTOMER = b"CUSTNO"
LABEL_VALIDITY = b"VALID"
LABEL_WALLET = b"WALLET"
LABEL_RELAY = b"RELAY"


def _sm4(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()  # noqa: S305 - one block: key/MAC derivation
    return enc.update(block) + enc.finalize()


def _sm4_decrypt(key: bytes, block: bytes) -> bytes:
    dec = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()  # noqa: S305 - one block
    return dec.update(block) + dec.finalize()


def _pad(data: bytes) -> bytes:
    data += b"\x80"
    return data + b"\x00" * (-len(data) % 16)


def cbc_mac(key: bytes, data: bytes) -> bytes:
    """4-byte SM4 CBC-MAC (zero IV, 80 00.. padding)."""
    enc = Cipher(algorithms.SM4(key), modes.CBC(b"\x00" * 16)).encryptor()
    out = enc.update(_pad(data)) + enc.finalize()
    return out[-16:][:4]


def diversification(meter_number: str) -> bytes:
    """The 8-byte diversification factor: 00 00 + the 6-byte meter number (wire order)."""
    return b"\x00\x00" + bytes.fromhex(meter_number.rjust(12, "0"))[::-1]


def meter_key(master_key: bytes, meter_number: str) -> bytes:
    d = diversification(meter_number)
    return _sm4(master_key, d + bytes(b ^ 0xFF for b in d))


def _session_key(key: bytes, random1: bytes, random2: bytes) -> bytes:
    return _sm4(key, random1 + random2 + b"SESS")


def _ciphertext1(key: bytes, random1: bytes, div: bytes) -> bytes:
    return _sm4(key, random1 + div)[:8]


def _fields(*parts: int | bytes | str) -> bytes:
    out = b""
    for p in parts:
        if isinstance(p, int):
            out += p.to_bytes(4, "little")
        elif isinstance(p, str):
            out += bytes.fromhex(p.rjust(12, "0"))[::-1]
        else:
            out += p
    return out


@dataclass(frozen=True, slots=True)
class Session:
    key: bytes
    expires: dt.datetime


class Esam:
    """The meter side: checks identity authentication, keeps the session, verifies MACs.

    `random_source` gives random-2; a seeded one keeps simulations reproducible.
    """

    def __init__(self, master_key: bytes, meter_number: str, *, serial: bytes, seed: int) -> None:
        self.meter_number = meter_number
        self.serial = serial
        self._key = meter_key(master_key, meter_number)
        self._div = diversification(meter_number)
        self._counter = seed & 0xFFFFFFFF
        self.session: Session | None = None
        self.session_minutes = DEFAULT_SESSION_MINUTES

    def _random2(self) -> bytes:
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        digest = hashlib.sha256(self._key + self._counter.to_bytes(4, "little")).digest()
        return digest[:4]

    def authenticate(
        self, ciphertext: bytes, random1: bytes, div: bytes, now: dt.datetime
    ) -> bytes | None:
        """Check ciphertext-1; on success open a session and return random-2."""
        self.session = None
        if div != self._div or ciphertext != _ciphertext1(self._key, random1, div):
            return None
        random2 = self._random2()
        self.session = Session(
            _session_key(self._key, random1, random2),
            now + dt.timedelta(minutes=self.session_minutes),
        )
        return random2

    def active(self, now: dt.datetime) -> Session | None:
        if self.session is not None and now >= self.session.expires:
            self.session = None
        return self.session

    def end(self) -> None:
        self.session = None

    def verify(self, now: dt.datetime, mac: bytes, label: bytes, *parts: int | bytes | str) -> bool:
        session = self.active(now)
        return session is not None and cbc_mac(session.key, label + _fields(*parts)) == mac

    def mac(self, now: dt.datetime, label: bytes, *parts: int | bytes | str) -> bytes:
        """A MAC the meter attaches to data it returns (read-back, status query)."""
        session = self.active(now)
        key = session.key if session is not None else self._key
        return cbc_mac(key, label + _fields(*parts))

    def decrypt_relay(self, now: dt.datetime, ciphertext: bytes) -> bytes | None:
        """The 8 plain bytes N1..N8 of a secure 1CH command, or None if it does not verify."""
        session = self.active(now)
        if session is None or len(ciphertext) != 20:
            return None
        body, mac = ciphertext[:16], ciphertext[16:]
        if cbc_mac(session.key, LABEL_RELAY + body) != mac:
            return None
        return _sm4_decrypt(session.key, body)[:8]


class EncryptionMachine:
    """The utility side (密码机): knows the master key, makes what the meter will accept.

    machine = EncryptionMachine(master_key)
    auth = machine.identity_auth("000000000123")          # -> IdentityAuthRequest fields
    ... send auth.request(operator) to the meter, get IdentityAuthReply(random2, serial) ...
    session = auth.session(reply.random)                   # a MacMaker for this session
    request = session.top_up(operator, amount_fen, count, customer_number)
    """

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 16:
            raise ValueError("the SM4 master key is 16 bytes")
        self.master_key = master_key

    def identity_auth(self, meter_number: str, random1: bytes | None = None) -> PendingAuth:
        key = meter_key(self.master_key, meter_number)
        r1 = random1 if random1 is not None else os.urandom(8)
        div = diversification(meter_number)
        return PendingAuth(key, meter_number, _ciphertext1(key, r1, div), r1, div)


@dataclass(frozen=True, slots=True)
class PendingAuth:
    """Ciphertext-1, random-1 and the diversification factor for one identity authentication."""

    key: bytes
    meter_number: str
    ciphertext: bytes
    random: bytes
    diversification: bytes

    def session(self, random2: bytes) -> MacMaker:
        return MacMaker(_session_key(self.key, self.random, random2))


@dataclass(frozen=True, slots=True)
class MacMaker:
    """MACs and ciphertexts for one identity-auth session."""

    key: bytes

    def top_up_macs(self, amount_fen: int, count: int, customer: str) -> tuple[bytes, bytes]:
        mac1 = cbc_mac(self.key, LABEL_TOP_UP + _fields(amount_fen, count))
        mac2 = cbc_mac(self.key, LABEL_CUSTOMER + _fields(customer, amount_fen, count))
        return mac1, mac2

    def wallet_init_macs(self, preset_fen: int, count: int) -> tuple[bytes, bytes]:
        return (
            cbc_mac(self.key, LABEL_WALLET + _fields(preset_fen)),
            cbc_mac(self.key, LABEL_WALLET + _fields(count)),
        )

    def validity_mac(self, minutes: int) -> bytes:
        return cbc_mac(self.key, LABEL_VALIDITY + _fields(minutes))

    def relay_ciphertext(self, plain: bytes) -> bytes:
        """20 bytes for a secure 1CH: SM4(session key, N1..N8 padded) + MAC."""
        if len(plain) != 8:
            raise ValueError("relay command plain text is N1..N8, 8 bytes")
        body = _sm4(self.key, plain + b"\x80" + b"\x00" * 7)
        return body + cbc_mac(self.key, LABEL_RELAY + body)
