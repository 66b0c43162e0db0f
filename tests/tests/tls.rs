//! The `tls` link for two-way networks: mutual certificate authentication around the same
//! frames. A sender with a certificate from another CA is refused; check-config names bad files.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gapsync_tests::{Certs, Lab, count_files, make_certs, make_file, wait_until};

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn tls_lab(receiver: &Certs, sender: &Certs) -> Lab {
    let mut lab = Lab::new("tls-edge-cloud");
    lab.receiver_extra = format!(
        "[tls]\ncert = {}\nkey = {}\nca = {}\n",
        q(&receiver.server_cert),
        q(&receiver.server_key),
        q(&receiver.ca)
    );
    lab.sender_extra.push_str(&format!(
        "[tls]\ncert = {}\nkey = {}\nca = {}\n",
        q(&sender.client_cert),
        q(&sender.client_key),
        q(&sender.ca)
    ));
    lab
}

#[test]
fn files_cross_a_mutually_authenticated_tls_link() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = make_certs(dir.path(), "site");
    let mut lab = tls_lab(&certs, &certs);
    let mut expected = BTreeMap::new();
    for i in 0..6 {
        let rel = format!("edge/{i}.csv");
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 1000 + i * 700_000, i as u64),
        );
    }
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(60));
    assert!(lab.receiver_log().contains("sender connected"));
}

#[test]
fn a_sender_certificate_from_another_ca_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let site = make_certs(dir.path(), "site");
    let rogue = make_certs(dir.path(), "rogue");
    // The rogue sender trusts the site's CA (so it accepts the receiver) but its own
    // certificate is signed by another CA.
    let sender = Certs {
        ca: site.ca.clone(),
        ..rogue
    };
    let mut lab = tls_lab(&site, &sender);
    make_file(&lab.spool.join("x.csv"), 1000, 1);
    lab.start_receiver();
    lab.start_sender();
    wait_until("the TLS refusal", Duration::from_secs(20), || {
        lab.receiver_log().contains("TLS handshake failed")
    });
    assert!(lab.receiver_log().lines().any(|l| l.contains("ERROR")
        && l.contains("TLS handshake failed")
        && l.contains("127.0.0.1")));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_files(&lab.dest), 0);
    assert!(lab.spool.join("x.csv").exists());
}

#[test]
fn check_config_refuses_a_tls_profile_without_certificates_and_names_bad_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let exe = gapsync_tests::bin("gapsync-receiver");
    let base = format!(
        "node = \"o\"\nprofile = \"tls-edge-cloud\"\nprofiles_dir = {:?}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1\"]\ncontrol_socket = \"receiver.sock\"\nstate_dir = {:?}\n",
        gapsync_tests::profiles_dir().display().to_string(),
        dir.path().join("state").display().to_string()
    );
    let pipe = format!(
        "[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = {:?}\n",
        dir.path().display().to_string()
    );
    let run = |text: String| {
        let cfg = dir.path().join("r.toml");
        std::fs::write(&cfg, text).expect("write");
        let out = std::process::Command::new(&exe)
            .arg("check-config")
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(format!("{base}{pipe}"));
    assert!(!ok && err.contains("add a [tls] table"), "{err}");
    let (ok, err) = run(format!(
        "{base}[tls]\ncert = \"missing.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n{pipe}"
    ));
    for needle in ["missing.pem", "k.pem", "ca.pem", "3 problem(s)"] {
        assert!(!ok && err.contains(needle), "{needle:?} in {err}");
    }
}
