"""A simulated ESAM (the meter's security chip) and a simulated encryption machine (密码机).

**Simulated, not the State-Grid algorithm.** The real ESAM commands and key hierarchy are not
public. This scheme has the same *shape* — per-meter keys diversified from a master key and the
meter number, identity authentication that opens a time-limited session, MACs over the top-up
fields, a machine that needs nothing but its inputs (stateless, like the real API) — built from
SM4 (GB/T 32907) as implemented by `cryptography`, so forged or replayed MACs are rejected the
way a meter would reject them:

* meter key   ``K_m = SM4(MK, D || ~D)`` with ``D = 00 00 || meter number`` (8 bytes, the
  diversification factor of the 03H identity-auth request);
* identity auth: the machine draws random-1 (8 bytes) and sends ciphertext-1 =
  ``SM4(K_m, R1 || D)[:8]``; the meter checks it with its own key and answers random-2 (4 bytes,
  new on every authentication) and its ESAM serial;
* session key ``K_s = SM4(K_m, R2 || D || "SESS")`` — what the machine's top-up, relay and
  parameter calls take (random-2 + factor, as ``Meter_Formal_InCreasePurse`` does); it signs what
  the master sends. Read-back key ``K_r = SM4(K_m, R1[:4] || D || "RDBK")`` — what the machine's
  MAC check takes (the high 4 bytes of random-1, as ``Meter_Formal_MacCheck`` does); it signs
  what the meter returns;
* a session lasts 5 minutes by default (07 00 01 FF changes it for the next sessions);
* MAC = the first 4 bytes of SM4-CBC-MAC(key, label || fields), zero IV, 80 00.. padding;
* a secure 1CH: ``SM4(K_s, N1..N8 || 80 00..)`` (16) + MAC over ESAM serial || that (4);
* a secure 14H write of DI (4 bytes, low first) with the machine's plaintext P: level 99
  (一类) ``P || MAC(K_s, "PARAM" || DI || P)``; level 98 (二类) ``C || MAC(K_s, "PARAM" || DI
  || C)`` with ``C = SM4-CBC(K_s, zero IV, P || 80 00..)``.

A MAC made for another session, another meter, or other fields fails (SERR "ESAM failed"); every
failure counts, and after `LOCK_AFTER` in one meter day the ESAM refuses secure operations
until midnight (SERR bit8, 远程安全认证锁住).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "LOCK_AFTER",
    "EncryptionMachine",
    "Esam",
    "MacMaker",
    "PendingAuth",
    "Session",
    "diversification",
    "meter_key",
]

DEFAULT_SESSION_MINUTES = 5
#: MAC failures in one meter day after which secure operations are suspended until midnight
LOCK_AFTER = 200
LABEL_TOP_UP = b"TOPUP"
LABEL_CUSTOMER = b"CUSTNO"
LABEL_VALIDITY = b"VALID"
LABEL_WALLET = b"WALLET"
LABEL_RELAY = b"RELAY"
LABEL_PARAM = b"PARAM"


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


def _session_key(key: bytes, random2: bytes, div: bytes) -> bytes:
    return _sm4(key, random2 + div + b"SESS")


def _readback_key(key: bytes, random1: bytes, div: bytes) -> bytes:
    return _sm4(key, random1[:4] + div + b"RDBK")


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
    """K_s: verifies what the master sends (MACs, 1CH ciphertext)"""
    readback_key: bytes
    """K_r: signs what the meter returns (status query, read-back)"""
    started: dt.datetime
    expires: dt.datetime


class Esam:
    """The meter side: checks identity authentication, keeps the session, verifies MACs, counts
    MAC failures (and locks after `lock_after` of them in one meter day).

    random-2 comes from a counter hashed with the meter key, seeded per meter: simulations are
    reproducible, and every authentication gets a new one.
    """

    def __init__(self, master_key: bytes, meter_number: str, *, serial: bytes, seed: int) -> None:
        self.meter_number = meter_number
        self.serial = serial
        self._key = meter_key(master_key, meter_number)
        self._div = diversification(meter_number)
        self._counter = seed & 0xFFFFFFFF
        self.session: Session | None = None
        self.session_minutes = DEFAULT_SESSION_MINUTES
        self.lock_after = LOCK_AFTER
        self.mac_failures = 0
        """MAC failures on `failure_day` (cleared at the meter's midnight)"""
        self.failure_day: dt.date | None = None
        self._suspended = False

    def _random2(self) -> bytes:
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        digest = hashlib.sha256(self._key + self._counter.to_bytes(4, "little")).digest()
        return digest[:4]

    def authenticate(
        self, ciphertext: bytes, random1: bytes, div: bytes, now: dt.datetime
    ) -> bytes | None:
        """Check ciphertext-1; on success open a session and return random-2. Any attempt,
        good or bad, ends the previous session (the ESAM's random state is reset)."""
        self.session = None
        if div != self._div or ciphertext != _ciphertext1(self._key, random1, div):
            return None
        random2 = self._random2()
        self.session = Session(
            _session_key(self._key, random2, div),
            _readback_key(self._key, random1, div),
            now,
            now + dt.timedelta(minutes=self.session_minutes),
        )
        return random2

    def active(self, now: dt.datetime) -> Session | None:
        if self.session is not None and now >= self.session.expires:
            self.session = None
        return self.session

    def remaining_minutes(self, now: dt.datetime) -> int:
        """Whole minutes left of the session (02 80 00 22), 0 without one."""
        session = self.active(now)
        return 0 if session is None else int((session.expires - now).total_seconds() // 60)

    def end(self) -> None:
        self.session = None

    def verify(self, now: dt.datetime, mac: bytes, label: bytes, *parts: int | bytes | str) -> bool:
        """Check a MAC of the session; a wrong one counts as a MAC failure."""
        session = self.active(now)
        if session is None:
            return False
        if cbc_mac(session.key, label + _fields(*parts)) == mac:
            return True
        self.mac_failed(now)
        return False

    def mac(self, now: dt.datetime, label: bytes, *parts: int | bytes | str) -> bytes | None:
        """The MAC the meter attaches to data it returns (read-back, status query); None
        without a session."""
        session = self.active(now)
        if session is None:
            return None
        return cbc_mac(session.readback_key, label + _fields(*parts))

    def decrypt_relay(self, now: dt.datetime, ciphertext: bytes) -> bytes | None:
        """The 8 plain bytes N1..N8 of a secure 1CH command, or None if it does not verify
        (without a session, or a MAC failure, which counts)."""
        session = self.active(now)
        if session is None or len(ciphertext) != 20:
            return None
        body, mac = ciphertext[:16], ciphertext[16:]
        if cbc_mac(session.key, LABEL_RELAY + self.serial + body) != mac:
            self.mac_failed(now)
            return None
        return _sm4_decrypt(session.key, body)[:8]

    def parameter(self, now: dt.datetime, di: int, data: bytes, *, cipher: bool) -> bytes | None:
        """The machine's plaintext of a secure 14H write of `di` (`data` = plaintext or
        ciphertext, then the 4-byte MAC), or None if it does not verify (no session, too short,
        a MAC failure — which counts — or ciphertext that does not decrypt to padded data)."""
        session = self.active(now)
        if session is None or len(data) < 5 or (cipher and (len(data) - 4) % 16):
            return None
        body, mac = data[:-4], data[-4:]
        if cbc_mac(session.key, LABEL_PARAM + di.to_bytes(4, "little") + body) != mac:
            self.mac_failed(now)
            return None
        if not cipher:
            return body
        dec = Cipher(algorithms.SM4(session.key), modes.CBC(b"\x00" * 16)).decryptor()
        plain = (dec.update(body) + dec.finalize()).rstrip(b"\x00")
        if not plain.endswith(b"\x80"):
            return None
        return plain[:-1]

    # -- the MAC-failure lock (挂起) ----------------------------------------------------------
    def _roll(self, today: dt.date) -> None:
        if self.failure_day != today:  # the midnight reset (清零点清零数据)
            self.failure_day = today
            self.mac_failures = 0
            self._suspended = False

    def mac_failed(self, now: dt.datetime) -> None:
        self._roll(now.date())
        self.mac_failures += 1
        if self.mac_failures >= self.lock_after:
            self._suspended = True
            self.session = None

    def suspended(self, now: dt.datetime) -> bool:
        """Secure operations hung up (SERR bit8) until the meter's next midnight."""
        self._roll(now.date())
        return self._suspended


class EncryptionMachine:
    """The utility side (密码机): knows the master key, makes what the meter will accept.
    Stateless, like the real machine: every call takes what it needs (random-2 from the meter
    for what the master sends, random-1 for checking what the meter returned).

    machine = EncryptionMachine(master_key)
    auth = machine.identity_auth("000000000123")          # -> IdentityAuthRequest fields
    ... send auth.request(operator) to the meter, get IdentityAuthReply(random2, serial) ...
    session = auth.session(reply.random)                   # or machine.session(meter, random2)
    mac1, mac2 = session.top_up_macs(amount_fen, count, customer_number)
    machine.mac_ok(meter, auth.random, data, mac)          # the MAC of read-back data
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

    def session(self, meter_number: str, random2: bytes) -> MacMaker:
        """MACs and ciphertexts for the session whose random-2 the meter answered."""
        key = meter_key(self.master_key, meter_number)
        return MacMaker(_session_key(key, random2, diversification(meter_number)))

    def mac_ok(self, meter_number: str, random1: bytes, data: bytes, mac: bytes) -> bool:
        """Whether `mac` is the meter's MAC over returned `data` (4-byte value fields, as the
        status query and the wallet read-back carry them) in the session of `random1`."""
        key = meter_key(self.master_key, meter_number)
        expected = cbc_mac(
            _readback_key(key, random1, diversification(meter_number)), LABEL_WALLET + data
        )
        return expected == mac


@dataclass(frozen=True, slots=True)
class PendingAuth:
    """Ciphertext-1, random-1 and the diversification factor for one identity authentication."""

    key: bytes
    meter_number: str
    ciphertext: bytes
    random: bytes
    diversification: bytes

    def session(self, random2: bytes) -> MacMaker:
        return MacMaker(_session_key(self.key, random2, self.diversification))

    def mac_ok(self, data: bytes, mac: bytes) -> bool:
        """Whether `mac` is the meter's MAC over returned `data` in this authentication."""
        key = _readback_key(self.key, self.random, self.diversification)
        return cbc_mac(key, LABEL_WALLET + data) == mac


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

    def parameter_update(self, di: int, plain: bytes, *, cipher: bool) -> bytes:
        """What a secure 14H write of `di` carries after DI, password and operator code:
        `plain` + MAC (level 99, ParameterUpdate) or its ciphertext + MAC (level 98,
        ParameterElseUpdate)."""
        if not plain:
            raise ValueError("a parameter write carries at least one byte")
        body = plain
        if cipher:
            enc = Cipher(algorithms.SM4(self.key), modes.CBC(b"\x00" * 16)).encryptor()
            body = enc.update(_pad(plain)) + enc.finalize()
        return body + cbc_mac(self.key, LABEL_PARAM + di.to_bytes(4, "little") + body)

    def relay_ciphertext(self, plain: bytes, esam_serial: bytes) -> bytes:
        """20 bytes for a secure 1CH: SM4(session key, N1..N8 padded) + MAC over the ESAM
        serial and that (the machine's UserControl takes the serial too)."""
        if len(plain) != 8:
            raise ValueError("relay command plain text is N1..N8, 8 bytes")
        if len(esam_serial) != 8:
            raise ValueError("the ESAM serial number is 8 bytes")
        body = _sm4(self.key, plain + b"\x80" + b"\x00" * 7)
        return body + cbc_mac(self.key, LABEL_RELAY + esam_serial + body)
