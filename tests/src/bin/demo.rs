//! gapsync-demo: the main job on loopback. Starts a receiver, the gate simulator and a sender
//! with the `syskeeper-2000` profile, transfers a set of sample files, verifies every byte,
//! and prints a summary. Its folder under the temporary directory is removed at the end unless
//! `--keep` is given (or the demo failed). Run: `cargo run --release -p gapsync-tests --bin
//! gapsync-demo` (the README's first command). With `--tables`, the table job instead
//! (demo/tables.rs): two PostgreSQL clusters of its own, tables instead of files.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
#[path = "demo/tables.rs"]
mod demo_tables;
use gapsync_tests::{Lab, count_files, count_lines, make_file, profiles_dir, wait_until};

#[derive(Parser, Debug)]
#[command(
    name = "gapsync-demo",
    about = "The main job on loopback: a receiver, the gate simulator and a sender transfer 300 \
             sample files (96 MB), verified byte by byte, then a summary. What it wrote under the \
             temporary directory is removed at the end unless --keep is given."
)]
struct Args {
    /// A profile of hardware-profiles/, by name.
    #[arg(default_value = "syskeeper-2000")]
    profile: String,
    /// Keep the demo's folder (spool, landed files, configs, logs) instead of removing it, and
    /// print where it is. A failed demo always keeps it.
    #[arg(long)]
    keep: bool,
    /// The table job instead: two PostgreSQL clusters of its own (source and target), pgbench's
    /// tables (snapshot), an events table with writers (incremental) and a table partitioned
    /// by day (partitions), compared row by row on both sides. Needs PostgreSQL installed
    /// (`apt-get install postgresql`), not running.
    #[arg(long)]
    tables: bool,
}

fn main() {
    let Args {
        profile,
        keep,
        tables,
    } = Args::parse();
    if !profiles_dir().join(format!("{profile}.toml")).is_file() {
        let mut shipped: Vec<String> = std::fs::read_dir(profiles_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".toml")
                    .map(str::to_owned)
            })
            .collect();
        shipped.sort();
        eprintln!(
            "gapsync-demo: no profile {profile:?} in {}; shipped: {}",
            profiles_dir().display(),
            shipped.join(", ")
        );
        std::process::exit(2);
    }
    if tables {
        demo_tables::require_postgres();
    }
    // The first run from a fresh clone compiles the daemons here (a few minutes); later runs
    // find them up to date in a second.
    println!("gapsync demo: building the daemons (release; cargo shows its progress)...");
    let build = Instant::now();
    gapsync_tests::build_daemons(true);
    println!(
        "gapsync demo: daemons ready ({:.0} s)",
        build.elapsed().as_secs_f64()
    );
    if tables {
        demo_tables::run(&profile, keep);
        return;
    }
    let mut lab = Lab::new(&profile);
    // Kept if the demo fails anywhere (a panic included); removed at the end of a good run
    // unless --keep.
    lab.root.disable_cleanup(true);
    println!(
        "gapsync demo: writing 300 sample files (96 MB) into {}...",
        lab.spool.display()
    );
    let mut expected = BTreeMap::new();
    let mut bytes = 0u64;
    let names = [
        "变电站遥测-{}.csv",
        "Überwachung-{}.log",
        "report {}.pdf",
        "scada-{}.dat",
    ];
    for i in 0..300usize {
        let size = if i == 0 {
            64 << 20
        } else {
            (i * 7919) % 200_000
        };
        let rel = format!(
            "day-{}/unit-{}/{}",
            i % 3,
            i % 7,
            names[i % names.len()].replace("{}", &i.to_string())
        );
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), size, i as u64 + 1),
        );
        bytes += size as u64;
    }
    println!("gapsync demo: starting the receiver, the gate simulator and the sender...");
    lab.start_receiver();
    lab.start_sim(&[]);
    let start = Instant::now();
    lab.start_sender();
    println!(
        "gapsync demo: receiver on {}, gate simulator on {}, sender started (profile {profile}); transferring...",
        lab.receiver_addr.map(|a| a.to_string()).unwrap_or_default(),
        lab.sim_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    lab.wait_for_tree(&expected, Duration::from_secs(900));
    wait_until("the spool to be emptied", Duration::from_secs(60), || {
        count_files(&lab.spool) == 0
    });
    let secs = start.elapsed().as_secs_f64();
    for p in [lab.sender.as_mut(), lab.receiver.as_mut()]
        .into_iter()
        .flatten()
    {
        p.term();
    }
    let delivered = count_lines(&lab.receiver_log(), &[" delivered "]);
    let stats = lab.sim_stats();
    let ok = delivered == expected.len() && stats.get("violations") == Some(&0);
    let root = lab.root.path().to_path_buf();
    println!();
    println!(
        "  files      {} sent, {} delivered exactly once, every one byte-identical (BLAKE3)",
        expected.len(),
        delivered
    );
    println!(
        "  bytes      {:.1} MB in {secs:.1} s = {:.1} MB/s ({} through the simulator, durable commits)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        if gapsync_tests::profile_is_udp(&profile) {
            "UDP with forward error correction".to_owned()
        } else {
            format!("window {}", gapsync_tests::profile(&profile).window)
        }
    );
    println!(
        "  gate       {} frames forwarded, {} reply bytes back, {} violations of the one-byte rule",
        stats.get("frames").unwrap_or(&0),
        stats.get("reverse_bytes").unwrap_or(&0),
        stats.get("violations").unwrap_or(&0)
    );
    println!(
        "  spool      emptied ({} files left)",
        count_files(&lab.spool)
    );
    drop(lab.sim.take());
    drop(lab.sender.take());
    drop(lab.receiver.take());
    if keep || !ok {
        println!("  landed in  {}", lab.dest.display());
        println!(
            "  logs       {}/rlogs/gapsync-receiver.*.log",
            root.display()
        );
        println!("             {}/slogs/gapsync-sender.*.log", root.display());
        println!(
            "  try        grep ' delivered ' {}/rlogs/*.log | head",
            root.display()
        );
        println!("  remove it  rm -rf {}", root.display());
    } else {
        drop(lab);
        if let Err(e) = std::fs::remove_dir_all(&root) {
            eprintln!("gapsync demo: cannot remove {}: {e}", root.display());
        }
        println!(
            "  cleaned    removed {} (run with --keep to look at the landed files and logs)",
            root.display()
        );
    }
    if !ok {
        eprintln!("gapsync demo: FAILED (the folder above is kept; see its logs)");
        std::process::exit(1);
    }
    println!("\ngapsync demo: OK");
}
