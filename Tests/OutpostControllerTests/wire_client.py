#!/usr/bin/env python3
"""An independent device client for the controller's wire format.

Python's ssl (OpenSSL) for mutual TLS, `cryptography` for the device key and
certificate, and a hand-written protobuf encoder/decoder of the few fields it
needs, so nothing here shares code with the Swift side. Registers with the
onboarding certificate, fetches config with the device certificate, checks
that config_hash is the SHA-256 of the DeviceConfig bytes, and that the same
hash gets 304. Then it polls (bounded: 60 polls, 0.25 s apart) until the
config changes (the test sets a secret through the admin socket) and decodes
DeviceConfig.secrets (field 8: repeated Secret {1 name, 2 value}), then sends a
DeviceInfo whose vault (field 13) holds them by SHA-256. Prints one JSON object;
exits non-zero on any mismatch.

usage: wire_client.py HOST PORT ROOT_CA ONBOARD_CERT ONBOARD_KEY WORKDIR SERIAL
"""
import datetime
import hashlib
import http.client
import json
import os
import ssl
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CT = "application/x-proto-binary"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number, data):
    # wire type 2: length-delimited (strings, bytes, messages)
    return varint(number << 3 | 2) + varint(len(data)) + data


def varint_field(number, n):
    # wire type 0: varint (ints, bools, enums)
    return varint(number << 3 | 0) + varint(n)


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def decode(buf):
    """Field number -> list of values (ints for varints, bytes otherwise)."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            ln, i = read_varint(buf, i)
            v, i = bytes(buf[i:i + ln]), i + ln
        elif wt == 1:
            v, i = bytes(buf[i:i + 8]), i + 8
        elif wt == 5:
            v, i = bytes(buf[i:i + 4]), i + 4
        else:
            raise ValueError(f"wire type {wt} at {i}")
        fields.setdefault(number, []).append(v)
    if i != len(buf):
        raise ValueError("trailing bytes")
    return fields


def make_identity(workdir, serial):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(workdir, "device.cert.pem"), os.path.join(workdir, "device.key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.PEM)


def connect(host, port, ca, cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    # The server certificate must name HOST (an IP SAN for 127.0.0.1).
    return http.client.HTTPSConnection(host, port, context=ctx, timeout=20)


def post(conn, path, body):
    conn.request("POST", path, body=body, headers={"Content-Type": CT})
    r = conn.getresponse()
    return r.status, r.read()


def main():
    host, port, ca, ob_cert, ob_key, workdir, serial = sys.argv[1:8]
    port = int(port)
    cert_path, key_path, cert_pem = make_identity(workdir, serial)
    result = {}

    onboard = connect(host, port, ca, ob_cert, ob_key)
    req = field_bytes(1, cert_pem) + field_bytes(2, serial.encode())
    status, body = post(onboard, "/api/v1/edgedevice/register", req)
    result["register"] = status
    if status != 201:
        raise SystemExit(f"register: {status} {body!r}")
    device_id = decode(body)[1][0].decode()
    status, _ = post(onboard, "/api/v1/edgedevice/config", b"")
    result["onboard_config"] = status
    onboard.close()

    dev = connect(host, port, ca, cert_path, key_path)
    status, body = post(dev, "/api/v1/edgedevice/config", b"")  # ConfigRequest{} is zero bytes
    result["config"] = status
    if status != 200:
        raise SystemExit(f"config: {status} {body!r}")
    resp = decode(body)
    config_bytes, config_hash = resp[1][0], resp[2][0].decode()
    config = decode(config_bytes)
    result["device_id"] = device_id
    result["config_device_id"] = config[1][0].decode()
    result["config_hash"] = config_hash
    result["hash_matches"] = hashlib.sha256(config_bytes).hexdigest() == config_hash
    # The same connection (keep-alive): unchanged config is 304.
    status, body = post(dev, "/api/v1/edgedevice/config", field_bytes(1, config_hash.encode()))
    result["config_again"] = status
    # The test sets a secret once the device is registered: the next 200 carries it.
    # (It may already be in the first config: registration and the test race.)
    result["secrets"] = None
    result["latest_config_hash"] = config_hash
    if 8 in config:
        result["secrets"] = [[decode(s)[1][0].decode(), decode(s)[2][0].decode()] for s in config[8]]
        result["secrets_hash_matches"] = result["hash_matches"]
    for _ in range(0 if 8 in config else 60):
        status, body = post(dev, "/api/v1/edgedevice/config", field_bytes(1, config_hash.encode()))
        if status == 200:
            resp = decode(body)
            changed_bytes, changed_hash = resp[1][0], resp[2][0].decode()
            changed = decode(changed_bytes)
            result["secrets"] = [[decode(s)[1][0].decode(), decode(s)[2][0].decode()] for s in changed.get(8, [])]
            result["secrets_hash_matches"] = hashlib.sha256(changed_bytes).hexdigest() == changed_hash
            result["latest_config_hash"] = changed_hash
            break
        time.sleep(0.25)
    # DeviceInfo (info.proto) with a vault: field 13, VaultInfo {1 state (1 = UNLOCKED), 2 detail,
    # 3 security_floor (optional: an explicit 0 is a floor of 0, not "unset"), 4 secrets {1 name,
    # 2 sha256 hex, 3 bytes}} holding the secrets just decoded: the controller must call them delivered.
    held = b""
    for name, value in result["secrets"] or []:
        v = value.encode()
        held += field_bytes(4, field_bytes(1, name.encode()) + field_bytes(2, hashlib.sha256(v).hexdigest().encode())
                            + varint_field(3, len(v)))
    vault = varint_field(1, 1) + field_bytes(2, b"opened by wire_client.py") + varint_field(3, 0) + held
    info = varint_field(9, int(time.time() * 1000)) + field_bytes(13, vault)
    status, _ = post(dev, "/api/v1/edgedevice/info", info)
    result["info"] = status
    # Attestation (attest.proto) for a device with no TPM keys: a nonce is refused (409), a
    # well-formed AttestationQuote too (409, no key), a malformed one is a 400.
    status, _ = post(dev, "/api/v1/edgedevice/attest/nonce", b"")
    result["attest_nonce"] = status
    entry = varint(1 << 3 | 0) + varint(8) + field_bytes(2, bytes(32))  # map<uint32, bytes> entry 8 → 32 zero bytes
    quote = (field_bytes(1, b"\xff\x54\x43\x47") + field_bytes(2, bytes(32)) + field_bytes(3, bytes(32))
             + field_bytes(4, entry) + field_bytes(6, b"IMGA") + field_bytes(7, b"1.0"))
    status, _ = post(dev, "/api/v1/edgedevice/attest/quote", quote)
    result["attest_quote"] = status
    status, body = post(dev, "/api/v1/edgedevice/attest/quote", b"\x0a\xff\xff\x01")
    result["attest_malformed"] = status
    result["attest_malformed_lines"] = len(body.decode(errors="replace").strip().split("\n"))
    dev.close()
    print(json.dumps(result, sort_keys=True))
    ok = (result["config_device_id"] == device_id and result["hash_matches"]
          and result["config_again"] == 304 and result["onboard_config"] == 403
          and result["secrets"] is not None and result["secrets_hash_matches"] and result["info"] == 200
          and result["attest_nonce"] == 409 and result["attest_quote"] == 409
          and result["attest_malformed"] == 400 and result["attest_malformed_lines"] == 1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
