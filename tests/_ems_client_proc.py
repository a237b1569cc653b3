"""A separate client process for disconnect-policy tests: places orders, prints their oids as
one JSON line, then idles until killed."""
import json
import os
import sys

os.environ.setdefault('PYTHONWARNINGS', 'ignore::FutureWarning')


async def main(port: int, name: str, policy: str, dark_price: float, live_price: float) -> None:
    import trio

    from piker_ems.clearing import Status, open_ems
    from piker_ems.service import maybe_open_pikerd

    async with maybe_open_pikerd(('127.0.0.1', port), name=name):
        async with open_ems('btcusd.sim', mode='dark', name=name, on_disconnect=policy) as (book, trades, _):
            dark = book.send('buy', dark_price, 1)
            live = book.send('buy', live_price, 1, exec_mode='live')
            want = {dark: 'dark_submitted', live: 'broker_submitted'}
            with trio.fail_after(15):
                async for msg in trades:
                    if isinstance(msg, Status) and want.get(msg.oid) == msg.resp:
                        del want[msg.oid]
                        if not want:
                            break
            print(json.dumps({'dark': dark, 'live': live}), flush=True)
            await trio.sleep_forever()


if __name__ == '__main__':
    import trio

    port, name, policy, dark_price, live_price = sys.argv[1:6]
    trio.run(main, int(port), name, policy, float(dark_price), float(live_price))
