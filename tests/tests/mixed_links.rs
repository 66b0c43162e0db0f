//! One sender process, two pipes on two link kinds at once: `scada` over TCP through the gate
//! simulator (its profile is the top-level one) and `diode` over UDP through the simulator's
//! diode mode (`profile = "udp-loopback"` on the pipe). Two receivers, one per link. Every
//! file of both pipes lands byte-identical, exactly once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use gapsync_tests::{
    Lab, Proc, bin, count_files, count_lines, make_file, profiles_dir, wait_until,
};

/// `n` files of mixed sizes (an empty one, a multi-frame one, small ones in folders).
fn files(spool: &Path, n: usize, seed: u64) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| {
            let size = match i {
                0 => 0,
                1 => 3 << 20,
                _ => (i * 7919) % 60_000,
            };
            let rel = format!("d{}/f-{i}.bin", i % 3);
            let digest = make_file(&spool.join(&rel), size, seed + i as u64);
            (rel, digest)
        })
        .collect()
}

/// The one sender's config: the tcp pipe takes the top-level profile, the udp pipe names its own.
fn sender_config(tcp: &Lab, udp: &Lab, diode_spool: &Path) -> std::path::PathBuf {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let tcp_gate = tcp.sim_addr.expect("tcp simulator");
    let udp_gate = udp.sim_addr.expect("udp simulator");
    let mut t = String::new();
    let _ = write!(
        t,
        "node = \"plant-a\"\nprofile = \"loopback\"\nprofiles_dir = {}\nstate_dir = {}\ncontrol_socket = {}\nlog_dir = {}\n\n\
         [[pipe]]\nname = \"scada\"\nspool = {}\ngate = \"{tcp_gate}\"\nsettle = \"200ms\"\npoll_interval = \"200ms\"\n\n\
         [[pipe]]\nname = \"diode\"\nprofile = \"udp-loopback\"\ngate = \"{udp_gate}\"\n\
         source = {{ type = \"spool\", path = {}, settle = \"200ms\", poll_interval = \"200ms\" }}\n",
        q(&profiles_dir()),
        q(&tcp.path("sstate")),
        q(&tcp.path("sstate").join("control.sock")),
        q(&tcp.path("slogs")),
        q(&tcp.spool),
        q(diode_spool),
    );
    let p = tcp.path("sender.toml");
    std::fs::write(&p, t).expect("write sender.toml");
    p
}

#[test]
fn one_sender_runs_a_gate_pipe_and_a_diode_pipe_at_once() {
    let mut tcp = Lab::new("loopback");
    let mut udp = Lab::new("udp-loopback");
    // The udp receiver's pipe for the sender's `diode` pipe (its own `scada` stays unused).
    let diode_dest = udp.path("diode-dest");
    std::fs::create_dir_all(&diode_dest).expect("diode dest");
    udp.receiver_pipe_extra = format!(
        "\n[[pipe]]\nname = \"diode\"\nfrom = \"plant-a\"\ndest = {:?}\n",
        diode_dest.display().to_string()
    );
    let diode_spool = tcp.path("diode-spool");
    let scada_files = files(&tcp.spool, 60, 1);
    let diode_files = files(&diode_spool, 60, 1000);

    tcp.start_receiver();
    tcp.start_sim(&[]);
    udp.start_receiver();
    udp.start_sim(&[]);
    let cfg = sender_config(&tcp, &udp, &diode_spool);
    let args = ["run", "--config", &cfg.display().to_string()].map(str::to_owned);
    tcp.sender = Some(Proc::spawn(
        "sender",
        &bin("gapsync-sender"),
        &args,
        tcp.root.path(),
    ));

    tcp.wait_for_tree(&scada_files, Duration::from_secs(120));
    wait_until("the diode pipe's files", Duration::from_secs(120), || {
        gapsync_tests::tree(&diode_dest) == diode_files
    });

    // Exactly once on each receiver (a landed file's log line may follow its rename), and
    // the sender said `sent` once per file per pipe.
    let landed = |lab: &Lab, needles: &[&str]| count_lines(&lab.receiver_log(), needles);
    wait_until("every delivery logged", Duration::from_secs(20), || {
        landed(&tcp, &[" delivered "]) >= scada_files.len()
            && landed(&udp, &["worker: delivered ", "pipe=diode"]) >= diode_files.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    let diag = || format!("{}\n{}", tcp.diagnostics(), udp.diagnostics());
    assert_eq!(
        landed(&tcp, &[" delivered "]),
        scada_files.len(),
        "{}",
        diag()
    );
    assert_eq!(
        landed(&udp, &["worker: delivered ", "pipe=diode"]),
        diode_files.len(),
        "{}",
        diag()
    );
    let slog = tcp.sender_log();
    assert_eq!(
        count_lines(&slog, &[" sent ", "pipe=scada"]),
        scada_files.len()
    );
    assert_eq!(
        count_lines(&slog, &[" sent ", "pipe=diode"]),
        diode_files.len()
    );
    assert_eq!(
        count_lines(&slog, &["pipe started", "link=tcp"]),
        1,
        "{slog}"
    );
    assert_eq!(
        count_lines(&slog, &["pipe started", "link=udp"]),
        1,
        "{slog}"
    );
    // The gate pipe deletes what the receiver confirmed; the diode pipe moves what it sent.
    wait_until("both spools emptied", Duration::from_secs(30), || {
        count_files(&tcp.spool) == 0 && count_files(&diode_spool) == 0
    });
}
