//! 1,000 files of mixed sizes, nested folders and non-ASCII names cross the gate simulator and
//! arrive exactly once, byte-identical.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gapsync_tests::{Lab, count_files, count_lines, make_file, profile, wait_until};

/// Writes `n` files into `spool`: the edge sizes around one frame's payload, a 50 MiB file, and
/// small-to-medium files in nested folders with non-ASCII names. Returns path -> digest.
fn mixed_set(spool: &Path, chunk: usize, n: usize) -> BTreeMap<String, String> {
    let edge = [0, 1, chunk - 1, chunk, chunk + 1, 50 << 20];
    let names = [
        "变电站-{}.dat",
        "Überwachung-{}.csv",
        "données {}.bin",
        "plain-{}.log",
        "遥测_{}.txt",
    ];
    let mut out = BTreeMap::new();
    for i in 0..n {
        let size = match edge.get(i) {
            Some(&s) => s,
            None if i % 50 == 0 => 256 * 1024 + i * 997,
            None => (i * 7919) % 20_000,
        };
        let name = names[i % names.len()].replace("{}", &i.to_string());
        let rel = match i % 4 {
            0 => name,
            1 => format!("d{}/{name}", i % 10),
            2 => format!("d{}/sub-{}/{name}", i % 10, i % 3),
            _ => format!("区域-{}/d{}/deep/{name}", i % 2, i % 5),
        };
        let digest = make_file(&spool.join(&rel), size, i as u64 + 1);
        out.insert(rel, digest);
    }
    out
}

fn thousand_files_through_the_gate(profile_name: &str) {
    let mut lab = Lab::new(profile_name);
    let chunk = profile(profile_name).chunk_size();
    let expected = mixed_set(&lab.spool, chunk, 1000);
    lab.start_receiver();
    lab.start_sim(&[]);
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(600));
    wait_until(
        "the spool to be emptied after the commits",
        Duration::from_secs(60),
        || count_files(&lab.spool) == 0,
    );
    let rlog = lab.receiver_log();
    assert_eq!(
        count_lines(&rlog, &[" delivered "]),
        1000,
        "each file delivered exactly once\n{}",
        lab.diagnostics()
    );
    assert_eq!(count_lines(&lab.sender_log(), &[" sent "]), 1000);
    let stats = lab.sim_stats();
    assert_eq!(
        stats.get("violations"),
        Some(&0),
        "the reverse direction carried only one 0x00/0xFF byte per frame"
    );
    assert!(
        stats.get("frames").copied().unwrap_or(0) >= 3000,
        "open, data, commit per file: {stats:?}"
    );
    assert!(
        !rlog.contains("ERROR"),
        "no errors on a clean link\n{}",
        lab.diagnostics()
    );
}

#[test]
fn thousand_mixed_files_arrive_once_with_the_syskeeper_profile() {
    thousand_files_through_the_gate("syskeeper-2000");
}

#[test]
fn thousand_mixed_files_arrive_once_with_the_pipelined_loopback_profile() {
    assert!(profile("loopback").window.get() > 1);
    thousand_files_through_the_gate("loopback");
}
