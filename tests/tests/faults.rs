//! Faults on the way: the connection cut at 20 points, flipped bits, swallowed acks and a
//! stalled gate. Everything arrives once and intact, and cuts resume instead of restarting.

use std::collections::BTreeMap;
use std::time::Duration;

use gapsync_tests::{Lab, count_files, count_lines, make_file, profile, wait_until};

fn set(lab: &Lab, big: usize, small: usize) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::new();
    expected.insert(
        "big/archive.bin".to_owned(),
        make_file(&lab.spool.join("big/archive.bin"), big, 7),
    );
    for i in 0..small {
        let rel = format!("small/{i}.csv");
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 1000 + i * 3001, 100 + i as u64),
        );
    }
    expected
}

#[test]
fn cuts_at_20_points_resume_instead_of_restarting() {
    let mut lab = Lab::new("syskeeper-2000");
    let big = 30 << 20;
    let expected = set(&lab, big, 5);
    let total: usize = big + (0..5).map(|i| 1000 + i * 3001).sum::<usize>();
    let mut args = Vec::new();
    for k in 1..=20u64 {
        // Spread over the stream, at odd offsets so cuts land inside headers and payloads.
        args.push("--cut-after-bytes".to_owned());
        args.push((k * total as u64 / 21 + k * 4099).to_string());
    }
    lab.start_receiver();
    lab.start_sim(&args);
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(300));
    let stats = lab.sim_stats();
    assert_eq!(stats["cuts"], 20, "{stats:?}");
    assert_eq!(stats["violations"], 0);
    // Stop-and-wait loses at most the one unanswered frame per cut. Restarting from zero would
    // resend ~15 MiB per cut on average.
    let chunk = profile("syskeeper-2000").chunk_size() as u64;
    let resent = stats["forward_bytes"].saturating_sub(total as u64);
    assert!(
        resent < 20 * (chunk + 4096) + (256 << 10),
        "resent {resent} bytes for 20 cuts\n{}",
        lab.diagnostics()
    );
    assert_eq!(
        count_lines(&lab.receiver_log(), &[" delivered ", "big/archive.bin"]),
        1,
        "delivered once"
    );
    eprintln!(
        "20 cuts: {} payload bytes, {resent} bytes resent (frame and header overhead included)",
        total
    );
}

#[test]
fn flipped_bits_are_refused_and_the_file_arrives_intact() {
    let mut lab = Lab::new("syskeeper-2000");
    let expected = set(&lab, 5 << 20, 2);
    lab.start_receiver();
    // Byte 200 lies in the first data frame's header (after the Hello and the Open); byte
    // 2,500,000 in the payload of the third data frame.
    lab.start_sim(&[
        "--flip-bit-at-byte".into(),
        "200".into(),
        "--flip-bit-at-byte".into(),
        "2500000".into(),
    ]);
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(120));
    assert_eq!(lab.sim_stats()["flips"], 2);
    let rlog = lab.receiver_log();
    assert!(
        rlog.contains("refused a frame"),
        "the corrupt frame was refused\n{}",
        lab.diagnostics()
    );
    assert!(rlog.contains("checksum mismatch"), "{}", lab.diagnostics());
    assert_eq!(count_lines(&rlog, &[" delivered ", "big/archive.bin"]), 1);
    assert_eq!(lab.sim_stats()["violations"], 0);
}

/// Runs a transfer of a 20 MiB file and 10 small ones through the simulator with `faults`.
fn transfer_with(faults: &[&str]) -> (Lab, std::collections::HashMap<String, u64>) {
    let mut lab = Lab::new("loopback");
    let expected = set(&lab, 20 << 20, 10);
    lab.start_receiver();
    lab.start_sim(&faults.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(120));
    wait_until("the spool to empty", Duration::from_secs(30), || {
        count_files(&lab.spool) == 0
    });
    for rel in expected.keys() {
        assert_eq!(
            count_lines(&lab.receiver_log(), &[" delivered ", rel]),
            1,
            "{rel} delivered once"
        );
    }
    let stats = lab.sim_stats();
    assert_eq!(stats["violations"], 0);
    (lab, stats)
}

#[test]
fn swallowed_acks_lose_nothing() {
    // The 3rd and 6th replies (each the second frame of a connection, after its Hello and one
    // frame) are swallowed and the connection cut instead.
    let (_lab, stats) = transfer_with(&["--drop-ack", "3", "--drop-ack", "6"]);
    assert_eq!(stats["dropped_acks"], 2, "{stats:?}");
    assert!(
        stats["connections"] >= 3,
        "each swallowed ack forced a reconnect: {stats:?}"
    );
}

#[test]
fn a_gate_stalled_past_the_ack_timeout_is_detected_and_nothing_is_lost() {
    // The gate holds the sender's bytes for 6 s, longer than loopback's 5 s ack timeout.
    let (lab, stats) = transfer_with(&["--stall-at-byte", "12000000", "--stall-ms", "6000"]);
    assert_eq!(stats["stalls"], 1, "{stats:?}");
    // Found either waiting for an answer or waiting for the gate to take more bytes; both end
    // the connection and resume on a new one.
    let slog = lab.sender_log();
    assert!(
        slog.contains("no answer within the ack timeout")
            || slog.contains("the gate accepted no bytes for 5s"),
        "the stall was detected\n{}",
        lab.diagnostics()
    );
    assert!(stats["connections"] >= 2, "{stats:?}");
}

#[test]
fn the_e_language_envelope_carries_files_through_a_reverse_gate() {
    let mut lab = Lab::new("reverse-gate-e-language");
    let expected = set(&lab, 3 << 20, 5);
    lab.start_receiver();
    lab.start_sim(&["--envelope".into(), "e-language".into()]);
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(120));
    // The Hello and at least the twelve frames 3 MiB need at 256 KiB (the small files share
    // frames); the simulator writes its counters every 100 ms.
    wait_until("the simulator's counters", Duration::from_secs(5), || {
        let s = lab.sim_stats();
        s.get("frames").is_some_and(|&f| f >= 13) && s.get("frames") == s.get("reverse_bytes")
    });
    let stats = lab.sim_stats();
    assert_eq!(stats["violations"], 0);
    assert_eq!(
        stats["frames"], stats["reverse_bytes"],
        "one reply per frame: {stats:?}"
    );
}

#[test]
fn the_profile_rate_limit_paces_the_sender() {
    // A lower bound only (the limit can make a transfer slower, never faster), so a slow
    // machine cannot fail it.
    let mut lab = Lab::new("loopback");
    lab.sender_extra.push_str("rate_limit_mbit = 16\n");
    let mut expected = BTreeMap::new();
    expected.insert(
        "paced.bin".to_owned(),
        make_file(&lab.spool.join("paced.bin"), 4 << 20, 5),
    );
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(60));
    let ms: u64 = lab
        .sender_log()
        .lines()
        .find(|l| l.contains(" sent ") && l.contains("paced.bin"))
        .and_then(|l| {
            l.split("duration_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("sent line with duration");
    // 4 MiB at 16 Mbit/s = 2.1 s; one frame may go out at once (burst), so at least 1 s.
    assert!(ms >= 1000, "4 MiB at 16 Mbit/s took only {ms} ms");
}
