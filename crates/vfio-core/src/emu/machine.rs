//! MIG_DEVICE_STATE SET: the kernel's walk (vfio_uapi::next_step), one arc
//! at a time, each doing a driver's work. A failing arc leaves the device
//! in the state it had reached, as mtty does, and that includes leaving
//! RESUMING with an image it refuses: mtty records a state only once its
//! step succeeded (checked against Linux 6.12 in tests/kernel).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vfio_uapi::{next_step, DeviceState};

use super::device::{Shared, State};
use super::session::{LoadSession, SaveSession};
use super::threads::{spawn_loader, spawn_saver};

use DeviceState::{
    Error, PreCopy as PC, PreCopyP2p as PCP, Resuming as RS, Running as R, RunningP2p as RP, Stop as S,
    StopCopy as SC,
};

/// Walks to `target`; `Ok(Some(fd))` when the last arc opened a data fd.
pub fn set_state(shared: &Arc<Shared>, st: &mut State, raw_target: u32) -> io::Result<Option<OwnedFd>> {
    let Some(target) = DeviceState::from_u32(raw_target) else {
        return Err(st.fail(libc::EINVAL, format!("device_state {raw_target} is not a migration state")));
    };
    let mut recovering = st.faults.fail_recovery.take();
    let mut out = None;
    while st.state != target {
        let cur = st.state;
        let Some(next) = next_step(st.cfg.flags, cur, target) else {
            return Err(st.fail(
                libc::EINVAL,
                format!("{cur} -> {target} is not a move this device (flags {:#x}) can make", st.cfg.flags.bits()),
            ));
        };
        if let Some(e) = recovering.take() {
            st.close_sessions();
            st.state = Error;
            st.poke();
            return Err(st.fail(e, format!("{cur} -> {next} failed (injected: recovery fails too), device in ERROR")));
        }
        if let Some((to, e, rec)) = st.faults.fail_move {
            if to == next {
                st.faults.fail_move = None;
                if rec {
                    st.faults.fail_recovery = Some(e);
                }
                return Err(st.fail(e, format!("{cur} -> {next} failed (injected), device stays in {cur}")));
            }
        }
        let fd = arc(shared, st, cur, next)?;
        st.state = next;
        st.stats.arcs += 1;
        st.poke();
        if fd.is_some() && next != target {
            // The table never opens a file mid-walk; mtty WARNs here too.
            return Err(st.fail(libc::EINVAL, format!("{cur} -> {next} opened a data fd mid-walk")));
        }
        out = fd;
    }
    Ok(out)
}

fn arc(shared: &Arc<Shared>, st: &mut State, cur: DeviceState, next: DeviceState) -> io::Result<Option<OwnedFd>> {
    match (cur, next) {
        // Nothing to do: running or quiescing changes no files (the ticker
        // starts/stops dirtying and DMA from the state itself).
        (R, RP) | (RP, R) | (RP, S) | (S, RP) | (R, S) | (S, R) | (PC, PCP) | (PCP, PC) => Ok(None),
        (R, PC) | (RP, PCP) | (S, SC) => open_saving(shared, st, next == SC).map(Some),
        (PCP, SC) | (PC, SC) => {
            // Same file, now also carrying what only a stopped device can give.
            if let Some(s) = st.saving.as_mut() {
                s.stop_copy = true;
                vmm_sys::eventfd_signal(&s.wake);
                Ok(None)
            } else {
                open_saving(shared, st, true).map(Some)
            }
        }
        (PC, R) | (PCP, RP) | (SC, S) => {
            st.close_sessions();
            Ok(None)
        }
        (S, RS) => open_resuming(shared, st).map(Some),
        (RS, S) => finish_resuming(st).map(|_| None),
        _ => Err(st.fail(libc::EINVAL, format!("no driver arc {cur} -> {next}"))),
    }
}

fn open_saving(shared: &Arc<Shared>, st: &mut State, stop_copy: bool) -> io::Result<OwnedFd> {
    let id = st.new_session_id();
    let corrupt = std::mem::take(&mut st.faults.corrupt);
    let (mut s, fd) = SaveSession::new(id, st.content.layout, st.cfg.initial_bytes, corrupt, stop_copy)?;
    s.thread = Some(spawn_saver(shared.clone(), id)?);
    st.saving = Some(s);
    Ok(fd)
}

fn open_resuming(shared: &Arc<Shared>, st: &mut State) -> io::Result<OwnedFd> {
    let id = st.new_session_id();
    let (mut s, fd) = LoadSession::new(id, st.content.layout)?;
    s.thread = Some(spawn_loader(shared.clone(), id)?);
    st.resuming = Some(s);
    Ok(fd)
}

/// Leaving RESUMING: everything userspace wrote before this ioctl is in the
/// pipe. The session thread has judged all but what is still queued (at
/// most a pipe's worth), so this parses that rest, takes the verdict the
/// parser already holds and installs the image by moving its bookkeeping:
/// no pass over the state inside the migration's downtime.
fn finish_resuming(st: &mut State) -> io::Result<()> {
    let Some(s) = st.resuming.as_mut() else {
        return Err(st.fail(libc::EINVAL, "RESUMING without a resume file".into()));
    };
    s.drain(usize::MAX);
    let verdict = s.loader.finish();
    match verdict {
        Ok(()) => {
            let l = &mut s.loader;
            st.content.seed = l.seed;
            st.content.gens = std::mem::take(&mut l.gens);
            st.content.hashes = std::mem::take(&mut l.hashes);
            st.close_sessions();
            Ok(())
        }
        // The resume file stays open, as mtty's does: a caller may write the
        // rest of a short image and ask again, or reset.
        Err(r) => Err(st.fail(r.errno(), format!("RESUMING -> STOP: image refused: {}; device stays in RESUMING", r.message()))),
    }
}
