//! `pipes` as a table for people: one line per pipe (columns sized to their contents, at most
//! 120 characters), then indented lines for what needs attention (quarantine, filters, peers,
//! the last error). `--json` prints the rows themselves instead.

use chrono::{DateTime, Utc};

use super::PipeRow;

/// The widest line the table prints.
pub const WIDTH: usize = 120;

/// Which daemon's rows: the columns differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sender,
    Receiver,
}

impl Side {
    /// The side of a program name (`gapsync-receiver` or anything else: sender).
    pub fn of_program(program: &str) -> Self {
        if program.contains("receiver") {
            Self::Receiver
        } else {
            Self::Sender
        }
    }
}

/// A column: its header, its widest value, and whether numbers align right.
struct Column {
    head: &'static str,
    cap: usize,
    right: bool,
}

const fn col(head: &'static str, cap: usize, right: bool) -> Column {
    Column { head, cap, right }
}

const SENDER: [Column; 10] = [
    col("NAME", 20, false),
    col("STATE", 7, false),
    col("LINK", 4, false),
    col("REMOTE", 21, false),
    col("QUEUED", 13, true),
    col("FLIGHT", 6, true),
    col("DELIVERED", 13, true),
    col("TODAY", 13, true),
    col("LAST", 6, true),
    col("ETA", 6, true),
];

const RECEIVER: [Column; 9] = [
    col("NAME", 20, false),
    col("STATE", 7, false),
    col("FROM", 20, false),
    col("PEERS", 5, true),
    col("DELIVERED", 13, true),
    col("TODAY", 13, true),
    col("LAST", 6, true),
    col("PARTIALS", 8, true),
    col("REFUSED", 7, true),
];

/// The table of `rows` as `pipes` prints it, `now` giving the ages in LAST.
pub fn render(side: Side, rows: &[PipeRow], now: DateTime<Utc>) -> String {
    if rows.is_empty() {
        return "no pipes\n".into();
    }
    let columns: &[Column] = match side {
        Side::Sender => &SENDER,
        Side::Receiver => &RECEIVER,
    };
    let cells: Vec<Vec<String>> = rows.iter().map(|r| cells(side, r, now)).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let widest = cells.iter().map(|row| chars(&row[i])).max().unwrap_or(0);
            widest.max(chars(c.head)).min(c.cap)
        })
        .collect();
    let heads: Vec<String> = columns.iter().map(|c| c.head.to_owned()).collect();
    let mut out = line(columns, &widths, &heads);
    for (row, cells) in rows.iter().zip(&cells) {
        out += &line(columns, &widths, cells);
        for detail in details(side, row) {
            out += &fit(&format!("  {detail}"), WIDTH);
            out.push('\n');
        }
    }
    out
}

fn line(columns: &[Column], widths: &[usize], cells: &[String]) -> String {
    let parts: Vec<String> = columns
        .iter()
        .zip(widths)
        .zip(cells)
        .map(|((c, &w), cell)| {
            let cell = fit(cell, w);
            if c.right {
                format!("{cell:>w$}")
            } else {
                format!("{cell:<w$}")
            }
        })
        .collect();
    let mut text = parts.join(" ").trim_end().to_owned();
    text.push('\n');
    text
}

fn cells(side: Side, r: &PipeRow, now: DateTime<Utc>) -> Vec<String> {
    let dash = || "-".to_owned();
    let last = r.last_delivery.map_or_else(dash, |t| age(now, t));
    let delivered = pair(r.delivered_objects, r.delivered_bytes);
    let today = pair(r.delivered_today_objects, r.delivered_today_bytes);
    let name = r.name.clone();
    let state = r.state.as_str().to_owned();
    let opt = |v: Option<u64>| v.map_or_else(dash, count);
    match side {
        Side::Sender => vec![
            name,
            state,
            r.link.clone().unwrap_or_else(dash),
            r.remote.clone().unwrap_or_else(dash),
            pair(r.queued_objects, r.queued_bytes),
            opt(r.in_flight),
            delivered,
            today,
            last,
            r.drain_eta_seconds.map_or_else(dash, duration),
        ],
        Side::Receiver => vec![
            name,
            state,
            r.from.clone().unwrap_or_else(dash),
            opt(r.peers.as_ref().map(|p| p.len() as u64)),
            delivered,
            today,
            last,
            opt(r.partials),
            opt(r.refused_connections),
        ],
    }
}

/// The indented lines under a row: counts that need a look, peers, the last error.
fn details(side: Side, r: &PipeRow) -> Vec<String> {
    let mut out = Vec::new();
    let counts: Vec<String> = [
        ("quarantined", r.quarantined),
        ("filtered", r.filtered),
        ("ignored", r.ignored),
        ("links skipped", r.skipped_links),
        ("links refused", r.refused_links),
    ]
    .into_iter()
    .filter_map(|(what, n)| n.filter(|&n| n > 0).map(|n| format!("{what} {n}")))
    .collect();
    if !counts.is_empty() {
        out.push(counts.join(", "));
    }
    if let (Side::Receiver, Some(peers)) = (side, &r.peers) {
        let list: Vec<String> = peers
            .iter()
            .map(|p| format!("{} since {}", p.address, stamp(p.since)))
            .collect();
        if !list.is_empty() {
            out.push(format!("peers: {}", list.join(", ")));
        }
    }
    if let Some(note) = &r.note {
        out.push(format!("note: {note}"));
    }
    if let Some(error) = &r.last_error {
        let at = r.last_error_at.map(|t| format!(" {}", stamp(t)));
        out.push(format!("last error{}: {error}", at.unwrap_or_default()));
    }
    out
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `width` characters, the last one an ellipsis when cut.
fn fit(s: &str, width: usize) -> String {
    if chars(s) <= width {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Objects and bytes in one cell: `1234 5.6M`.
fn pair(objects: u64, bytes: u64) -> String {
    format!("{} {}", count(objects), size(bytes))
}

/// A count in at most 5 characters: 12345, 123k, 1.2M.
fn count(n: u64) -> String {
    compact(n, 1000, &["", "k", "M", "G", "T", "P"])
}

/// A size in at most 6 characters, binary units: 512B, 1.5K, 1023.9M.
fn size(n: u64) -> String {
    compact(n, 1024, &["B", "K", "M", "G", "T", "P"])
}

fn compact(n: u64, base: u64, units: &[&str]) -> String {
    let limit = if base == 1000 { 100_000 } else { 1024 };
    if n < limit {
        return format!("{n}{}", units[0]);
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= base as f64 && unit + 1 < units.len() {
        value /= base as f64;
        unit += 1;
    }
    let digits = usize::from(value < 10.0);
    format!("{value:.digits$}{}", units[unit])
}

/// How long ago `then` was: 5s, 12m, 3h, 4d (`now` if in the future).
fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let secs = u64::try_from((now - then).num_seconds()).unwrap_or(0);
    if secs == 0 {
        return "now".into();
    }
    duration(secs)
}

/// A duration in at most 6 characters: 45s, 12m, 3h05m, 4d03h.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ if secs < 100 * 86_400 => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
