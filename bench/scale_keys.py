"""Keys for bench/scale.sh, made the way keyplane makes them (kpi_, 32
base62 characters, a CRC32 checksum as 6 more; SHA-256 stored), so that
keyplane can be asked about them: writes the rows for PostgreSQL's COPY
into api_keys on stdout, and the secrets, one a line, to --secrets.

    python3 bench/scale_keys.py --instances ids.txt --per-instance 10 --secrets s.txt | psql -c 'copy ...'
"""

import argparse
import hashlib
import secrets
import uuid
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def instance_key() -> str:
    signed = "kpi_" + "".join(secrets.choice(ALPHABET) for _ in range(32))
    value, checksum = zlib.crc32(signed.encode()), ""
    for _ in range(6):
        checksum = ALPHABET[value % 62] + checksum
        value //= 62
    return signed + checksum


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", required=True, help="a file of instance ids, one a line")
    parser.add_argument("--per-instance", type=int, required=True)
    parser.add_argument("--secrets", required=True)
    args = parser.parse_args()
    with open(args.instances) as ids, open(args.secrets, "w") as out:
        for instance in (line.strip() for line in ids if line.strip()):
            for _ in range(args.per_instance):
                secret = instance_key()
                digest = hashlib.sha256(secret.encode()).hexdigest()
                masked = "kpi_…" + secret[-4:]
                # id, instance_id, name, digest, masked, scopes, created_at, expires_at
                print(f"{uuid.uuid4()}\t{instance}\tbench\t\\\\x{digest}\t{masked}\t{{inference:chat}}\t"
                      "2026-12-01 00:00:00+00\t2027-02-01 00:00:00+00")
                out.write(secret + "\n")


if __name__ == "__main__":
    main()
