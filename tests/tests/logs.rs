//! Logs and alarms an operator can trust: values quoted so a file name cannot forge a line or
//! a field, no colours off a terminal, alarms for a pipe that cannot deliver and for a silent
//! pipe, warnings limited per peer and cause, and today's counters surviving a restart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use gapsync_protocol::{Envelope, FrameKind, encode_body, encode_frame};
use gapsync_tests::{Lab, bin, count_lines, make_file, profiles_dir, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// The `key=value` fields of a text log line, after its message (values unquoted and
/// unescaped as the README describes). Keys may repeat: all are returned in order.
fn fields(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    let mut word = String::new();
    let mut key: Option<String> = None;
    let mut flush = |word: &mut String, key: &mut Option<String>| {
        if let Some(k) = key.take() {
            out.push((k, std::mem::take(word)));
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' => flush(&mut word, &mut key),
            '=' if key.is_none() => key = Some(std::mem::take(&mut word)),
            '"' if key.is_some() && word.is_empty() => {
                while let Some(d) = chars.next() {
                    match d {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => word.push('\n'),
                            Some('r') => word.push('\r'),
                            Some('t') => word.push('\t'),
                            Some(e) => word.push(e),
                            None => {}
                        },
                        d => word.push(d),
                    }
                }
            }
            c => word.push(c),
        }
    }
    flush(&mut word, &mut key);
    out
}

/// Every line of `log` starts with a timestamp: no line was forged by a value.
fn assert_every_line_is_an_event(log: &str, what: &str) {
    for line in log.lines() {
        let ts = line.split(' ').next().unwrap_or_default();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T',
            "{what}: a line that is not an event of its own: {line:?}"
        );
    }
}

#[test]
fn file_names_cannot_forge_a_line_or_a_field() {
    let mut lab = Lab::new("syskeeper-2000");
    let names = [
        "a b.txt",
        "k=v name.bin",
        "x path=evil.bin",
        "q\"uote\" path=\"x.bin",
        "über.bin",
    ];
    for (i, n) in names.iter().enumerate() {
        make_file(&lab.spool.join(n), 100 + i, i as u64);
    }
    // A newline is refused by the sender (quarantined), and its ERROR names it.
    let forged = "x\nINFO delivered path=evil";
    std::fs::write(lab.spool.join(forged), b"forged").expect("write");
    lab.start_receiver();
    lab.start_sender();
    wait_until("five deliveries", WAIT, || {
        count_lines(&lab.receiver_log(), &[" delivered "]) >= names.len()
    });
    wait_until("the quarantine line", WAIT, || {
        lab.sender_log().contains("file quarantined")
    });
    let rlog = lab.receiver_log();
    let delivered: Vec<&str> = rlog.lines().filter(|l| l.contains(" delivered ")).collect();
    assert_eq!(
        delivered.len(),
        names.len(),
        "one line per delivery:\n{rlog}"
    );
    let mut paths: Vec<String> = delivered
        .iter()
        .map(|l| {
            let f = fields(l);
            let p: Vec<&String> = f
                .iter()
                .filter(|(k, _)| k == "path")
                .map(|(_, v)| v)
                .collect();
            assert_eq!(p.len(), 1, "exactly one path field in {l:?}");
            p[0].clone()
        })
        .collect();
    paths.sort();
    let mut want: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(paths, want, "each name reads back exactly:\n{rlog}");
    assert!(rlog.contains(r#"path="a b.txt""#), "{rlog}");
    assert!(rlog.contains(r#"path="k=v name.bin""#), "{rlog}");
    assert!(rlog.contains(r#"path="q\"uote\" path=\"x.bin""#), "{rlog}");
    assert_every_line_is_an_event(&rlog, "receiver log");
    // The sender says `sent` once the receiver's answer arrived, a moment after the delivery.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count_lines(&lab.sender_log(), &[" sent "]) < names.len()
        && std::time::Instant::now() < until
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let slog = lab.sender_log();
    assert_every_line_is_an_event(&slog, "sender log");
    assert!(
        slog.contains(r#"path="x\nINFO delivered path=evil""#),
        "the refused name is escaped:\n{slog}"
    );
    assert_eq!(count_lines(&slog, &[" sent "]), names.len(), "{slog}");
}

#[test]
fn stderr_has_no_colours_when_it_is_not_a_terminal() {
    let lab = Lab::new("syskeeper-2000");
    let cfg = lab.path("receiver.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"outside-1\"\nprofile = \"syskeeper-2000\"\nprofiles_dir = {:?}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\nstate_dir = {:?}\ncontrol_socket = \"receiver.sock\"\nlog_time = \"local\"\n[[pipe]]\nname = \"scada\"\nfrom = \"plant-a\"\ndest = {:?}\n",
            profiles_dir().display().to_string(),
            lab.path("rstate").display().to_string(),
            lab.dest.display().to_string(),
        ),
    )
    .expect("config");
    let err = lab.path("stderr");
    // No log_dir: lines go to stderr, here a file. TZ three hours east of UTC (POSIX sign).
    let mut child = Command::new(bin("gapsync-receiver"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .env("TZ", "XYZ-3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start receiver");
    wait_until("the listening line", WAIT, || {
        std::fs::read_to_string(&err).is_ok_and(|t| t.contains(" listening "))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&err).expect("stderr");
    assert!(!text.contains('\u{1b}'), "no escape sequences: {text:?}");
    let line = text
        .lines()
        .find(|l| l.contains(" listening "))
        .expect("line");
    let ts = line.split(' ').next().unwrap_or_default();
    assert!(
        ts.ends_with("+03:00"),
        "log_time = local gives local time: {line}"
    );
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn a_pipe_that_cannot_deliver_raises_one_error_with_its_cause_and_clears_on_delivery() {
    let mut lab = Lab::new("syskeeper-2000");
    lab.sender_pipe_extra = "alarm_after = \"2s\"\n".into();
    let digest = make_file(&lab.spool.join("waiting.bin"), 5000, 3);
    lab.receiver_addr = Some(closed_port());
    lab.start_sender();
    wait_until("the alarm", WAIT, || {
        count_lines(&lab.sender_log(), &[" ERROR ", "alarm=not_delivering"]) >= 1
    });
    // Said once, not at every failed attempt (the attempts go on every 500 ms).
    std::thread::sleep(Duration::from_secs(3));
    let log = lab.sender_log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "one ERROR while it lasts:\n{log}");
    assert!(
        errors[0].contains("cause=\"cannot connect to the gate:"),
        "the cause is named: {}",
        errors[0]
    );
    assert!(errors[0].contains("pipe=scada"), "{}", errors[0]);
    // The receiver comes up on that port: the file goes, and the alarm clears.
    lab.start_receiver();
    lab.wait_for_tree(
        &[("waiting.bin".to_owned(), digest)].into_iter().collect(),
        WAIT,
    );
    wait_until("the alarm cleared line", WAIT, || {
        count_lines(
            &lab.sender_log(),
            &[" INFO ", "alarm cleared", "alarm=not_delivering"],
        ) == 1
    });
    assert_eq!(
        count_lines(&lab.sender_log(), &[" ERROR "]),
        1,
        "{}",
        lab.sender_log()
    );
}

#[test]
fn an_idle_pipe_is_not_alarmed() {
    let mut lab = Lab::new("syskeeper-2000");
    lab.sender_pipe_extra = "alarm_after = \"1s\"\n".into();
    lab.receiver_addr = Some(closed_port());
    lab.start_sender();
    std::thread::sleep(Duration::from_secs(3));
    let log = lab.sender_log();
    assert!(log.contains(" started "), "{log}");
    assert_eq!(
        count_lines(&log, &["alarm="]),
        0,
        "nothing waits, no alarm:\n{log}"
    );
}

#[test]
fn a_silent_receiver_pipe_raises_its_alarm_and_clears_when_a_file_arrives() {
    let mut lab = Lab::new("syskeeper-2000");
    lab.receiver_pipe_extra = "silence_alarm = \"2s\"\n".into();
    lab.start_receiver();
    wait_until("the silence alarm", WAIT, || {
        count_lines(
            &lab.receiver_log(),
            &[" ERROR ", "alarm=silence", "pipe=scada", "peer=plant-a"],
        ) == 1
    });
    let digest = make_file(&lab.spool.join("late.bin"), 2000, 4);
    lab.start_sender();
    lab.wait_for_tree(
        &[("late.bin".to_owned(), digest)].into_iter().collect(),
        WAIT,
    );
    wait_until("the silence alarm cleared", WAIT, || {
        count_lines(
            &lab.receiver_log(),
            &[" INFO ", "alarm cleared", "alarm=silence"],
        ) == 1
    });
    // Counted again from the delivery: two more seconds of silence, and it is said again.
    wait_until("the silence alarm after the delivery", WAIT, || {
        count_lines(&lab.receiver_log(), &[" ERROR ", "alarm=silence"]) == 2
    });
    let log = lab.receiver_log();
    let order: Vec<bool> = log
        .lines()
        .filter(|l| l.contains("alarm=silence"))
        .map(|l| l.contains(" ERROR "))
        .collect();
    assert_eq!(
        order,
        [true, false, true],
        "raised, cleared, raised:\n{log}"
    );
}

#[test]
fn three_bad_frames_with_three_causes_are_three_lines() {
    let mut lab = Lab::new("syskeeper-2000");
    lab.start_receiver();
    let addr = lab.receiver_addr.expect("addr");
    let hello = encode_body(&gapsync_tests::hello(&gapsync_tests::profile(
        "syskeeper-2000",
    )));
    let frame = |kind, body: &[u8]| {
        let mut out = Vec::new();
        encode_frame(Envelope::Raw, kind, 0, 0, 0, body, &mut out).expect("encode");
        out
    };
    let mut bad_crc = frame(FrameKind::Hello, &hello);
    bad_crc[8] ^= 0xFF;
    let attempts = [
        b"GARBAGE!GARBAGE!GARBAGE!GARBAGE!GARBAGE!GARBAGE!".to_vec(),
        frame(FrameKind::Data, b"data before any hello"),
        bad_crc,
    ];
    for bytes in &attempts {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(bytes).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
    }
    wait_until("three refusals", WAIT, || {
        count_lines(&lab.receiver_log(), &["refused a frame"]) >= 3
    });
    let log = lab.receiver_log();
    let errors: BTreeMap<String, usize> = log
        .lines()
        .filter(|l| l.contains("refused a frame"))
        .map(|l| {
            let f = fields(l);
            let e = f.iter().find(|(k, _)| k == "error").map(|(_, v)| v.clone());
            (e.unwrap_or_default(), 1)
        })
        .collect();
    assert_eq!(
        errors.len(),
        3,
        "three different reasons are each said:\n{log}"
    );
    // A repeat of one cause from the same peer is limited.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&attempts[0]).expect("write");
    let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count_lines(&lab.receiver_log(), &["refused a frame"]),
        3,
        "{}",
        lab.receiver_log()
    );
}

/// The last `summary` line's value of `key`, in a log.
fn last_summary(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find(|l| l.contains(" summary "))
        .and_then(|l| fields(l).into_iter().find(|(k, _)| k == key))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn todays_counters_survive_a_restart() {
    let mut lab = Lab::new("syskeeper-2000");
    lab.receiver_extra = "summary_interval = \"1s\"\n".into();
    lab.sender_extra = format!("summary_interval = \"1s\"\n{}", lab.sender_extra);
    let mut expected = BTreeMap::new();
    for i in 0..3 {
        let name = format!("f{i}.bin");
        expected.insert(name.clone(), make_file(&lab.spool.join(&name), 1000, i));
    }
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, WAIT);
    wait_until("summaries counting the three files", WAIT, || {
        last_summary(&lab.receiver_log(), "today_files") == Some(3)
            && last_summary(&lab.sender_log(), "today_files") == Some(3)
    });
    let status = lab.receiver.as_mut().expect("receiver").term();
    assert!(
        status.success(),
        "receiver stops cleanly on SIGTERM: {status:?}"
    );
    let status = lab.sender.as_mut().expect("sender").term();
    assert!(
        status.success(),
        "sender stops cleanly on SIGTERM: {status:?}"
    );
    let (rbefore, sbefore) = (
        count_lines(&lab.receiver_log(), &[" summary "]),
        count_lines(&lab.sender_log(), &[" summary "]),
    );
    lab.start_receiver();
    lab.start_sender();
    wait_until("first summaries after the restart", WAIT, || {
        count_lines(&lab.receiver_log(), &[" summary "]) > rbefore
            && count_lines(&lab.sender_log(), &[" summary "]) > sbefore
    });
    for (what, log) in [
        ("receiver", lab.receiver_log()),
        ("sender", lab.sender_log()),
    ] {
        assert_eq!(
            last_summary(&log, "files"),
            Some(0),
            "{what}: since start\n{log}"
        );
        assert_eq!(
            last_summary(&log, "today_files"),
            Some(3),
            "{what}: today\n{log}"
        );
        assert!(
            last_summary(&log, "today_bytes").is_some_and(|b| b >= 3000),
            "{what}\n{log}"
        );
    }
}
