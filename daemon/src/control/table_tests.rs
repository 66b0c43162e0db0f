use super::*;
use crate::control::{Peer, PipeState};

fn now() -> DateTime<Utc> {
    "2026-12-03T12:00:00Z".parse().expect("now")
}

/// A sender row with every field at its widest.
fn widest_sender() -> PipeRow {
    let mut r = PipeRow::new("a-very-long-pipe-name-beyond-twenty", PipeState::Waiting);
    r.link = Some("tls".into());
    r.remote = Some("[2001:db8::1234:5678]:28101".into());
    r.queued_objects = 99_999;
    r.queued_bytes = 1023 << 20;
    r.in_flight = Some(99_999);
    r.delivered_objects = u64::MAX;
    r.delivered_bytes = u64::MAX;
    r.delivered_today_objects = 123_456_789;
    r.delivered_today_bytes = 999 << 30;
    r.last_delivery = Some(now() - chrono::Duration::days(40));
    r.drain_eta_seconds = Some(99 * 86_400);
    r.quarantined = Some(3);
    r.filtered = Some(0);
    r.last_error = Some("x".repeat(300));
    r.last_error_at = Some(now());
    r
}

#[test]
fn every_line_fits_120_characters_even_with_the_widest_values() {
    let text = render(Side::Sender, &[widest_sender()], now());
    for line in text.lines() {
        assert!(
            line.chars().count() <= WIDTH,
            "{} chars: {line}",
            line.chars().count()
        );
    }
    assert!(text.contains("a-very-long-pipe-na…"), "{text}");
    assert!(
        text.contains("  quarantined 3\n"),
        "zero counts are left out:\n{text}"
    );
    assert!(
        text.contains("  last error 2026-12-03 12:00:00Z: xxx"),
        "{text}"
    );
}

#[test]
fn a_sender_row_reads_as_an_operator_expects() {
    let mut r = PipeRow::new("scada", PipeState::Running);
    r.link = Some("tcp".into());
    r.remote = Some("192.0.2.131:28101".into());
    r.queued_objects = 12;
    r.queued_bytes = 3 << 20;
    r.in_flight = Some(4);
    r.delivered_objects = 1_234_567;
    r.delivered_bytes = 5 << 30;
    r.delivered_today_objects = 800;
    r.delivered_today_bytes = 1536;
    r.last_delivery = Some(now() - chrono::Duration::seconds(125));
    r.drain_eta_seconds = Some(3 * 3600 + 5 * 60);
    let text = render(Side::Sender, &[r], now());
    let expected = "\
NAME  STATE   LINK REMOTE             QUEUED FLIGHT DELIVERED    TODAY LAST   ETA
scada RUNNING tcp  192.0.2.131:28101 12 3.0M      4 1.2M 5.0G 800 1.5K   2m 3h05m
";
    assert_eq!(text, expected);
}

#[test]
fn a_receiver_row_shows_its_sender_peers_and_partials() {
    let mut r = PipeRow::new("scada", PipeState::Running);
    r.from = Some("plant-a".into());
    r.peers = Some(vec![Peer {
        address: "192.0.2.7:40000".into(),
        since: "2026-12-03T11:00:00Z".parse().expect("since"),
    }]);
    r.partials = Some(2);
    r.refused_connections = Some(0);
    let text = render(Side::Receiver, &[r], now());
    let expected = "\
NAME  STATE   FROM    PEERS DELIVERED TODAY LAST PARTIALS REFUSED
scada RUNNING plant-a     1      0 0B  0 0B    -        2       0
  peers: 192.0.2.7:40000 since 2026-12-03 11:00:00Z
";
    assert_eq!(text, expected);
    assert_eq!(render(Side::Receiver, &[], now()), "no pipes\n");
}

#[test]
fn counts_sizes_and_durations_are_compact() {
    assert_eq!(count(99_999), "99999");
    assert_eq!(count(123_456), "123k");
    assert_eq!(count(u64::MAX), "18447P");
    assert_eq!(size(1023), "1023B");
    assert_eq!(size(1536), "1.5K");
    assert_eq!(size(u64::MAX), "16384P");
    assert_eq!(duration(45), "45s");
    assert_eq!(duration(3600 * 26), "1d02h");
    assert_eq!(age(now(), now() + chrono::Duration::seconds(5)), "now");
}

#[test]
fn the_readme_shows_what_pipes_prints() {
    let mut scada = PipeRow::new("scada", PipeState::Running);
    scada.link = Some("tcp".into());
    scada.remote = Some("192.0.2.131:28101".into());
    (scada.queued_objects, scada.queued_bytes) = (12, 3 << 20);
    scada.in_flight = Some(4);
    (scada.delivered_objects, scada.delivered_bytes) = (1_234_567, 5 << 30);
    (scada.delivered_today_objects, scada.delivered_today_bytes) = (800, 1536);
    scada.last_delivery = Some(now() - chrono::Duration::seconds(125));
    scada.drain_eta_seconds = Some(3 * 3600 + 5 * 60);
    let mut meters = PipeRow::new("meters", PipeState::Stopped);
    meters.link = Some("udp".into());
    meters.remote = Some("198.51.100.7:5000".into());
    meters.in_flight = Some(0);
    meters.last_error = Some("the gate refused the connection".into());
    meters.last_error_at = Some("2026-12-03T11:58:02Z".parse().expect("time"));
    let text = render(Side::Sender, &[scada, meters], now());
    let readme = include_str!("../../../README.md");
    assert!(
        readme.contains(&format!("```text\n{text}```")),
        "README.md should show:\n{text}"
    );
}
