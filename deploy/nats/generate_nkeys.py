"""Write the two Secrets of deploy/components/nats-nkeys: a fresh nkey pair per kgslb NATS
user, the public keys for the nats-server (Secret kgslb-nats-nkeys) and the seeds for the
services (Secret kgslb-nats-nkey-seeds; each service mounts only its own key).

    .venv/bin/python -m deploy.nats.generate_nkeys | kubectl -n kgslb-system apply -f -

With three sites, apply the same output in every site (the servers of one cluster share
their users). Keep the admin seed for the nats CLI: `nats --nkey admin.nk` (kubectl -n
kgslb-system get secret kgslb-nats-nkey-seeds -o jsonpath='{.data.admin}' | base64 -d).
"""

from __future__ import annotations

import os
import sys

import nkeys
import yaml

USERS = ("watcher", "reconciler", "health", "dns", "admin", "system")


def generate() -> dict[str, tuple[str, str]]:
    """Each user's (public key, seed)."""
    pairs = {}
    for user in USERS:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        public = nkeys.from_seed(bytearray(seed)).public_key.decode()
        pairs[user] = (public, seed.decode())
    return pairs


def secrets(pairs: dict[str, tuple[str, str]]) -> list[dict[str, object]]:
    def secret(name: str, data: dict[str, str]) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kgslb"}},
            "type": "Opaque",
            "stringData": data,
        }

    return [
        secret("kgslb-nats-nkeys", {user: public for user, (public, _) in pairs.items()}),
        secret("kgslb-nats-nkey-seeds", {user: seed for user, (_, seed) in pairs.items()}),
    ]


def main() -> None:
    yaml.safe_dump_all(secrets(generate()), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
