//! Which chunk sizes suit database files? Chunks two versions of a file
//! (before and after a change) under several FastCDC settings and prints,
//! for each, the chunk count and how many bytes the second version adds.
//!
//!   cargo run --release -p strongbox-repo --example chunk_params -- OLD NEW
//!
//! `bench/sqlite_data.py` makes a suitable pair (README "Chunk sizes").

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use strongbox_repo::{Chunker, ChunkerParams};

const KIB: u32 = 1024;

fn chunks(path: &str, params: ChunkerParams) -> (Vec<(blake3::Hash, usize)>, f64) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let t = Instant::now();
    Chunker { params, seed: 0 }
        .run(
            std::io::BufReader::with_capacity(1 << 20, file),
            &AtomicBool::new(false),
            |c| out.push((blake3::hash(&c), c.len())),
        )
        .unwrap();
    (out, t.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, old, new] = args.as_slice() else {
        eprintln!("usage: chunk_params OLD NEW");
        std::process::exit(2);
    };
    let candidates = [
        (2 * KIB, 8 * KIB, 32 * KIB),
        (4 * KIB, 16 * KIB, 64 * KIB),
        (8 * KIB, 32 * KIB, 128 * KIB),
        (16 * KIB, 32 * KIB, 128 * KIB),
        (16 * KIB, 64 * KIB, 256 * KIB),
        (64 * KIB, 256 * KIB, 1024 * KIB),
        (512 * KIB, 1024 * KIB, 8192 * KIB), // restic's sizes
    ];
    println!(
        "{:>24} {:>10} {:>10} {:>14} {:>9} {:>10}",
        "min/avg/max KiB", "chunks", "avg KiB", "2nd adds MB", "2nd adds", "MB/s"
    );
    for (min, avg, max) in candidates {
        let params = ChunkerParams { min, avg, max };
        let (a, secs) = chunks(old, params);
        let (b, _) = chunks(new, params);
        let total: usize = a.iter().map(|(_, n)| n).sum();
        let seen: HashSet<_> = a.iter().map(|(h, _)| h).collect();
        let added: usize = b.iter().filter(|(h, _)| !seen.contains(h)).map(|(_, n)| n).sum();
        println!(
            "{:>24} {:>10} {:>10.1} {:>14.2} {:>8.2}% {:>10.0}",
            format!("{}/{}/{}", min / KIB, avg / KIB, max / KIB),
            a.len(),
            total as f64 / a.len() as f64 / 1024.0,
            added as f64 / 1e6,
            100.0 * added as f64 / total as f64,
            total as f64 / 1e6 / secs
        );
    }
}
