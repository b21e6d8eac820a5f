//! The native RAM decoder (vmm-native/src/ram/decode.rs) on every input:
//! no panic, no byte written outside a block (each block sits between guard
//! pages), and the same result whether the records arrive at once (`parse`)
//! or in the chunks the input's first two bytes choose (`load`, as from a
//! socket): the same bytes taken, the same end, memory, counts and page bits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_fuzz::ram::decode::{load, parse, Block, End, State, Step};
use vmm_fuzz::ram::mem::{GuestMem, PageBits, PAGE};
use vmm_fuzz::ram::sock::Sock;

/// The ram-diff target's blocks (tests/fuzz/targets/ram-diff.ts), so its corpus serves here.
const BLOCKS: [(&[u8], usize); 2] = [(b"pc.ram", 16), (b"vga", 2)];
const GUARD: usize = PAGE;
const GUARD_BYTE: u8 = 0xa5;

struct Arena {
    bytes: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    bits: Vec<Vec<u8>>,
}

fn arena() -> Arena {
    let total = GUARD + BLOCKS.iter().map(|(_, p)| p * PAGE + GUARD).sum::<usize>();
    let mut bytes = vec![GUARD_BYTE; total];
    let mut ranges = Vec::new();
    let mut at = GUARD;
    for (i, (_, pages)) in BLOCKS.iter().enumerate() {
        for p in 0..*pages {
            bytes[at + p * PAGE..at + (p + 1) * PAGE].fill(0x10 + (i as u8) * 0x20 + p as u8);
        }
        ranges.push((at, at + pages * PAGE));
        at += pages * PAGE + GUARD;
    }
    let bits = BLOCKS.iter().map(|(_, p)| vec![0u8; p.div_ceil(8)]).collect();
    Arena { bytes, ranges, bits }
}

fn blocks(a: &mut Arena) -> Vec<Block<'static>> {
    let base = a.bytes.as_mut_ptr();
    a.ranges
        .iter()
        .zip(a.bits.iter_mut())
        .zip(BLOCKS.iter())
        .map(|((&(s, e), bits), (name, _))| Block {
            // SAFETY: the arena and its bitmaps outlive the blocks (both live
            // for one input), and s..e lies inside the arena.
            mem: unsafe { GuestMem::new(base.add(s), e - s) },
            // SAFETY: as above; the bitmap holds a bit for every page of the block.
            received: Some(unsafe { PageBits::new(bits.as_mut_ptr(), bits.len()) }),
            name,
        })
        .collect()
}

fn guards_intact(a: &Arena, how: &str) {
    let mut from = 0;
    for &(s, e) in a.ranges.iter().chain([(a.bytes.len(), a.bytes.len())].iter()) {
        if let Some(i) = a.bytes[from..s].iter().position(|&b| b != GUARD_BYTE) {
            panic!("{how}: arena byte {} (a guard before offset {s}) was written: outside every block", from + i);
        }
        from = e;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Chunk sizes from a page and more down to single bytes.
    let chunks = vec![1 + (data[0] as usize * 131) % (2 * PAGE + 64), 1 + (data[1] as usize * 7) % 300];
    let stream = &data[2..];

    let mut whole = arena();
    let wb = blocks(&mut whole);
    let mut ws = State::default();
    let (used, step) = parse(stream, 0, &wb, &mut ws);
    assert!(used <= stream.len(), "parse took {used} of {} bytes", stream.len());
    guards_intact(&whole, "parse");

    let mut split = arena();
    let sb = blocks(&mut split);
    let mut ss = State::default();
    let sock = Sock::new(stream.to_vec(), chunks.clone());
    let (taken, end) = load(&sock, &sb, &mut ss, 0).expect("the in-memory socket never fails");
    guards_intact(&split, "load");
    assert_eq!(taken as usize, sock.taken(), "load's count of bytes taken and the socket's");

    match (step, end) {
        (Step::Eos, End::Eos) | (Step::Stop, End::Stop) => assert_eq!(used, taken as usize, "{step:?} at different offsets ({chunks:?})"),
        (Step::More, End::Truncated) => assert!(ws.pending.is_some() && used == taken as usize, "truncated only inside a pending payload ({chunks:?})"),
        (Step::More, End::Eof) => assert!(ws.pending.is_none() && used == taken as usize, "({chunks:?})"),
        // A zero page whose fill byte came in a later chunk: found bad there,
        // by `load`, where the whole buffer left the record to RamLoader.
        (Step::Stop, End::ZeroFill { ch }) => assert!(ch != 0 && taken as usize > used, "({chunks:?})"),
        (a, b) => panic!("parse at once: {a:?} after {used} bytes; in chunks {chunks:?}: {b:?} after {taken}"),
    }
    assert_eq!((ws.normal, ws.zero), (ss.normal, ss.zero), "page counts ({chunks:?})");
    if !matches!(end, End::ZeroFill { .. }) {
        assert_eq!(ws.last, ss.last, "last block ({chunks:?})");
    }
    assert!(whole.bytes == split.bytes, "memory differs between parse at once and load in chunks {chunks:?}");
    assert_eq!(whole.bits, split.bits, "page bits ({chunks:?})");
});
