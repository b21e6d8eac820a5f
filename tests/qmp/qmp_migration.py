#!/usr/bin/env python3
"""Drive two VMMs through live migrations over QMP with QEMU's own client
library (the PyPI package qemu.qmp), the way a manager drives two QEMUs:
a destination started with -incoming defer, capabilities on both sides,
parameters, migrate, polling query-migrate, waiting for events,
migrate-continue after pause-before-switchover.

  --kind ours   two `vmm-migrate run --qmp` processes
  --kind qemu   two qemu-system-x86_64 processes (the control: the same
                calls must be what QEMU accepts)

The same function runs both; only how a process is started differs. It
checks: a cancelled migration leaves the source running (and the
destination exits, as QEMU's does), a max-bandwidth change mid-migration
changes the rate of ram.transferred, a second migration completes with the
source paused in pre-switchover until migrate-continue, the events QEMU
sends, and QEMU's error classes for bad calls. Prints one JSON line of
figures; exit 0 when every check passed, 1 otherwise (what failed on
stderr). Every wait is bounded.
"""
import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

from qemu.qmp import QMPClient, ExecuteError, EventListener

MiB = 1 << 20
RAM_MB = 32
SLOW = 2 * MiB      # bytes/s while the rate is measured
FAST = 16 * MiB     # bytes/s after the change
WINDOW = 1.0        # seconds each rate is measured over
UNLIMITED = 1 << 30  # QEMU 7.2 takes 0 as "no budget", not "no limit": a large one instead


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


class Vmm:
    """One VMM process and its QMP client."""

    def __init__(self, name, argv, sock):
        self.name, self.argv, self.sock = name, argv, sock
        self.proc = None
        self.qmp = QMPClient(name)
        self.events = EventListener()
        self.qmp.register_listener(self.events)
        self.seen = []

    async def start(self, log):
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.returncode is not None:
                raise CheckFailed(f'{self.name}: exited {self.proc.returncode} before its QMP socket appeared')
            if os.path.exists(self.sock):
                try:
                    await asyncio.wait_for(self.qmp.connect(self.sock), 10)
                    return
                except (OSError, asyncio.TimeoutError):
                    pass
            if time.monotonic() > deadline:
                raise CheckFailed(f'{self.name}: no QMP on {self.sock} within 30 s')
            await asyncio.sleep(0.05)

    async def x(self, cmd, args=None, timeout=10):
        return await asyncio.wait_for(self.qmp.execute(cmd, args), timeout)

    async def error_class(self, cmd, args=None):
        try:
            await self.x(cmd, args)
        except ExecuteError as e:
            return e.error_class
        return None

    def drain_events(self):
        for m in self.events.clear():
            self.seen.append((m['event'], m.get('data', {})))
        return self.seen

    async def wait_event(self, event, status=None, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            for name, data in self.drain_events():
                if name == event and (status is None or data.get('status') == status):
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f'{self.name}: no {event} {status or ""} event within {timeout} s (got {self.seen[-8:]})')
            try:
                m = await asyncio.wait_for(self.events.get(), min(left, 0.5))
                self.seen.append((m['event'], m.get('data', {})))
                if m['event'] == event and (status is None or m.get('data', {}).get('status') == status):
                    return
            except asyncio.TimeoutError:
                pass

    async def wait_status(self, want, timeout=30):
        """Poll query-migrate, as managers do, until the status is one of `want`."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self.x('query-migrate')
            if info.get('status') in want:
                return info
            if info.get('status') in ('failed', 'cancelled') and info['status'] not in want:
                raise CheckFailed(f'{self.name}: migration {info["status"]}: {info.get("error-desc", "")}')
            if time.monotonic() > deadline:
                raise CheckFailed(f'{self.name}: migration still {info.get("status")} after {timeout} s (waiting for {want})')
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout):
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            return None

    async def stop(self):
        if self.proc and self.proc.returncode is None:
            try:
                await self.x('quit', timeout=5)
            except Exception:
                pass
            if await self.wait_exit(5) is None:
                self.proc.kill()
                await self.proc.wait()
        try:
            await asyncio.wait_for(self.qmp.disconnect(), 5)
        except Exception:
            pass


def ours_argv(vmm, sock, dest, ram_mb):
    argv = [*vmm, 'run', '--qmp', sock, '--ram', f'{ram_mb}M']
    return argv + ['--incoming', 'defer'] if dest else argv


def qemu_argv(qemu, sock, dest, ram_file):
    # TCG, no kernel: SeaBIOS finds nothing to boot. The source's RAM is a
    # file of random bytes, so every page costs its 4 KiB on the wire and the
    # rate limit shows; the destination has the same RAM block, empty.
    backend = (f'memory-backend-ram,id=ram0,size={RAM_MB}M' if dest
               else f'memory-backend-file,id=ram0,size={RAM_MB}M,mem-path={ram_file},share=off')
    argv = [qemu, '-nodefaults', '-display', 'none', '-serial', 'none', '-monitor', 'none',
            '-machine', 'pc,accel=tcg,memory-backend=ram0', '-m', f'{RAM_MB}M', '-object', backend,
            '-qmp', f'unix:{sock},server=on,wait=off']
    return argv + ['-incoming', 'defer'] if dest else argv


async def rate(vmm, seconds):
    """Bytes per second of ram.transferred over `seconds`, read from query-migrate."""
    a = await vmm.x('query-migrate')
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    b = await vmm.x('query-migrate')
    dt = time.monotonic() - t0
    check(b.get('status') == 'active', f'{vmm.name}: the migration left active while its rate was measured ({b.get("status")})')
    return (b['ram']['transferred'] - a['ram']['transferred']) / dt


async def scenario(make, work, log):
    figures = {}
    src = make('src', False)
    dst1 = make('dst1', True)
    dst2 = None
    try:
        await asyncio.gather(src.start(log), dst1.start(log))
        check((await src.x('query-status'))['status'] == 'running', 'source runs at start')
        check((await dst1.x('query-status'))['status'] == 'inmigrate', 'a deferred destination is in inmigrate')
        check(await src.x('query-migrate') == {}, 'query-migrate before any migration is {}')

        # Bad calls get QEMU's error classes, on both kinds alike.
        check(await src.error_class('no-such-command') == 'CommandNotFound', 'unknown command: CommandNotFound')
        check(await src.error_class('migrate', {}) == 'GenericError', 'migrate without uri: GenericError')
        check(await src.error_class('migrate', {'uri': 42}) == 'GenericError', 'migrate with a number for uri: GenericError')
        check(await src.error_class('migrate-set-parameters', {'downtime-limit': 'x'}) == 'GenericError', 'a string for downtime-limit: GenericError')
        check(await src.error_class('migrate-continue', {'state': 'pre-switchover'}) == 'GenericError', 'migrate-continue with nothing paused: GenericError')
        check(await src.error_class('migrate-incoming', {'uri': 'unix:/nonexistent/x'}) == 'GenericError', 'migrate-incoming on a source: GenericError')

        for v in (src, dst1):
            await v.x('migrate-set-capabilities', {'capabilities': [{'capability': 'events', 'state': True}]})
        await src.x('migrate-set-capabilities', {'capabilities': [{'capability': 'pause-before-switchover', 'state': True}]})
        caps = {c['capability']: c['state'] for c in await src.x('query-migrate-capabilities')}
        check(caps.get('events') and caps.get('pause-before-switchover'), f'capabilities as set: {caps}')
        await src.x('migrate-set-parameters', {'max-bandwidth': SLOW, 'downtime-limit': 300})
        params = await src.x('query-migrate-parameters')
        check(params['max-bandwidth'] == SLOW and params['downtime-limit'] == 300, f'parameters as set: {params}')

        # 1: a migration cancelled while it runs.
        uri1 = f'unix:{work}/mig1.sock'
        await dst1.x('migrate-incoming', {'uri': uri1})
        await src.x('migrate', {'uri': uri1})
        await src.wait_status(('active',))
        check(await src.error_class('migrate', {'uri': uri1}) == 'GenericError', 'migrate while one runs: GenericError')
        check(await src.error_class('migrate-set-capabilities', {'capabilities': [{'capability': 'events', 'state': True}]}) == 'GenericError',
              'capabilities while a migration runs: GenericError')
        await src.x('migrate_cancel')
        await src.wait_status(('cancelled',), 20)
        await src.wait_event('MIGRATION', 'cancelled')
        check((await src.x('query-status'))['status'] == 'running', 'the source runs again after the cancel')
        code = await dst1.wait_exit(20)
        check(code is not None, 'the destination of a cancelled migration exits (QEMU does)')
        figures['cancelled_destination_exit'] = code

        # 2: a migration that completes, its bandwidth changed on the way.
        dst2 = make('dst2', True)
        await dst2.start(log)
        await dst2.x('migrate-set-capabilities', {'capabilities': [{'capability': 'events', 'state': True}]})
        uri2 = f'unix:{work}/mig2.sock'
        await dst2.x('migrate-incoming', {'uri': uri2})
        src.seen.clear()
        src.events.clear()
        await src.x('migrate', {'uri': uri2})
        await src.wait_status(('active',))
        await src.wait_event('MIGRATION', 'active')
        await asyncio.sleep(0.3)  # past the setup's first burst
        slow = await rate(src, WINDOW)
        await src.x('migrate-set-parameters', {'max-bandwidth': FAST})
        await asyncio.sleep(0.2)  # a rate-limit window (100 ms) and then some
        fast = await rate(src, WINDOW)
        figures.update(slow_rate=round(slow), fast_rate=round(fast))
        check(slow < SLOW * 1.5, f'at max-bandwidth {SLOW} B/s, ram.transferred grew {slow:.0f} B/s')
        # 8x by the settings; 2.5x leaves room for a loaded machine (2 shared cores) and still tells a change from none.
        check(fast > slow * 2.5, f'after max-bandwidth {SLOW} -> {FAST} B/s the rate went only {slow:.0f} -> {fast:.0f} B/s')
        check(fast < FAST * 1.5, f'at max-bandwidth {FAST} B/s, ram.transferred grew {fast:.0f} B/s')
        await src.x('migrate-set-parameters', {'max-bandwidth': UNLIMITED})
        await src.wait_event('MIGRATION', 'pre-switchover')
        info = await src.wait_status(('pre-switchover',))
        check((await src.x('query-status'))['status'] == 'finish-migrate', 'paused before the switchover, the source VM is stopped')
        check(await src.error_class('migrate-continue', {'state': 'active'}) == 'GenericError', 'migrate-continue for the wrong state: GenericError')
        await src.x('migrate-continue', {'state': 'pre-switchover'})
        info = await src.wait_status(('completed',))
        await src.wait_event('MIGRATION', 'completed')
        for k in ('total-time', 'downtime', 'setup-time'):
            check(isinstance(info.get(k), int), f'query-migrate has {k}: {info}')
        ram = info['ram']
        for k in ('transferred', 'remaining', 'total', 'duplicate', 'normal', 'dirty-sync-count', 'mbps', 'pages-per-second'):
            check(k in ram, f'query-migrate ram has {k}: {ram}')
        check(ram['remaining'] == 0 and ram['total'] >= RAM_MB * MiB, f'ram remaining 0, total the guest: {ram}')
        figures.update(downtime=info['downtime'], total_time=info['total-time'], transferred=ram['transferred'])
        src.drain_events()
        statuses = [d.get('status') for e, d in src.seen if e == 'MIGRATION']
        check(statuses[:2] == ['setup', 'active'] and statuses[-3:] == ['pre-switchover', 'device', 'completed'],
              f'the source MIGRATION events: {statuses}')
        check(any(e == 'MIGRATION_PASS' for e, _ in src.seen), 'MIGRATION_PASS events')
        check(any(e == 'STOP' for e, _ in src.seen), 'a STOP event on the source')
        await dst2.wait_status(('completed',))
        await dst2.wait_event('RESUME')
        check((await dst2.x('query-status'))['status'] == 'running', 'the destination runs the guest')
        check((await src.x('query-status'))['status'] == 'postmigrate', 'the source is in postmigrate')
        figures['source_events'] = statuses
        return figures
    finally:
        for v in (src, dst1, dst2):
            if v:
                await v.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--kind', choices=('ours', 'qemu'), required=True)
    ap.add_argument('--vmm', default='node dist/vmm/cli/main.js', help='how to run vmm-migrate (split on spaces)')
    ap.add_argument('--qemu', default=os.environ.get('QEMU', 'qemu-system-x86_64'))
    ap.add_argument('--ram', type=int, default=64, help='our microVM\'s RAM, MiB')
    ap.add_argument('--log', help='the VMMs\' output (default: a file in the work directory, printed on failure)')
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix=f'qmp-{a.kind}-')
    log_path = a.log or os.path.join(work, 'vmm.log')
    ok = False
    try:
        if a.kind == 'qemu':
            if not shutil.which(a.qemu):
                print(f'{a.qemu} not found', file=sys.stderr)
                return 2
            ram_file = os.path.join(work, 'ram')
            with open(ram_file, 'wb') as f:
                f.write(os.urandom(RAM_MB * MiB))
            make = lambda name, dest: Vmm(name, qemu_argv(a.qemu, f'{work}/{name}.qmp', dest, ram_file), f'{work}/{name}.qmp')
        else:
            vmm = a.vmm.split()
            make = lambda name, dest: Vmm(name, ours_argv(vmm, f'{work}/{name}.qmp', dest, a.ram), f'{work}/{name}.qmp')
        with open(log_path, 'ab') as log:
            figures = asyncio.run(asyncio.wait_for(scenario(make, work, log), 50))
        print(json.dumps({'kind': a.kind, 'ok': True, **figures}))
        ok = True
        return 0
    except CheckFailed as e:
        print(f'{a.kind}: FAILED: {e}', file=sys.stderr)
    except asyncio.TimeoutError:
        print(f'{a.kind}: FAILED: the scenario did not finish within 50 s', file=sys.stderr)
    finally:
        if not ok and os.path.exists(log_path):
            with open(log_path, errors='replace') as f:
                print(f'--- {a.kind} VMM output ---\n{f.read()[-4000:]}', file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return 1


if __name__ == '__main__':
    sys.exit(main())
