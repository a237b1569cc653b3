"""A process that registers itself as ``emsd`` with a cluster's registry, without the cluster's
secret (the registry-poisoning probe of issue 10). Prints its uid once registered."""
import sys

import tractor
import trio


async def main(port: int, name: str) -> None:
    async with tractor.open_root_actor(
        name=name, arbiter_addr=('127.0.0.1', port), loglevel='critical',
        enable_modules=['piker_ems.service._auth', 'piker_ems.clearing._ems'],
    ) as actor:
        print(actor.uid[1], flush=True)
        await trio.sleep_forever()


if __name__ == '__main__':
    trio.run(main, int(sys.argv[1]), sys.argv[2])
