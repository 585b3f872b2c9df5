//! What `isthmus-lab-app` prints, as types: the binary serialises them and the lab parses them,
//! so the two cannot drift apart. One JSON object per line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The line `serve` prints once every socket is bound.
pub const READY_LINE: &str = "ready";

/// One probe attempt: `{"i":0,"start_ms":3,"ok":true,"answer":"c2 10.2.1.3:7000",…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Sequence number, from 0.
    pub i: u64,
    /// When the attempt started, in ms since the probe started.
    pub start_ms: u64,
    pub ok: bool,
    /// The server's greeting line without its newline: `NAME LOCAL_ADDR:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// From the start of the attempt to the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The client's own address and port, to match the line `serve` logged for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Attempt {
    /// The first word of the answer: the serving app's `--name`.
    pub fn name(&self) -> Option<&str> {
        self.answer.as_deref().and_then(answer_name)
    }
}

/// The first word of a greeting.
pub fn answer_name(answer: &str) -> Option<&str> {
    answer.split_whitespace().next()
}

/// The probe's last line: `{"summary":true,"ok":N,"failed":N,"by_name":{…},…}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Always true; tells the summary from an attempt.
    pub summary: bool,
    pub ok: u64,
    pub failed: u64,
    /// Successful attempts by the first word of their answer.
    pub by_name: BTreeMap<String, u64>,
    /// Successful attempts by their whole answer (name and backend address).
    pub by_answer: BTreeMap<String, u64>,
    /// Wall-clock start of the probe, ms since the Unix epoch: `start_ms` of an attempt is
    /// relative to this.
    pub start_unix_ms: u64,
}

impl Summary {
    /// The summary of `attempts`, as the probe prints it.
    pub fn of(attempts: &[Attempt], start_unix_ms: u64) -> Summary {
        let mut s = Summary {
            summary: true,
            start_unix_ms,
            ..Summary::default()
        };
        for a in attempts {
            match (a.ok, a.answer.as_deref()) {
                (true, Some(answer)) => {
                    s.ok += 1;
                    let name = answer_name(answer).unwrap_or_default();
                    *s.by_name.entry(name.to_owned()).or_default() += 1;
                    *s.by_answer.entry(answer.to_owned()).or_default() += 1;
                }
                _ => s.failed += 1,
            }
        }
        s
    }
}

/// Everything one probe printed, checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// In order of `i`, with no gaps.
    pub attempts: Vec<Attempt>,
    pub summary: Summary,
}

impl ProbeReport {
    /// Parses a probe's stdout. Fails unless it is a gapless run of attempts from 0 followed
    /// by a summary that agrees with them.
    pub fn parse(stdout: &str) -> Result<ProbeReport> {
        let mut attempts = Vec::new();
        let mut summary = None;
        for (n, line) in stdout
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            if summary.is_some() {
                bail!("line {}: output after the summary: {line}", n + 1);
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("line {}: not JSON: {line}", n + 1))?;
            if value.get("summary").is_some() {
                summary = Some(
                    serde_json::from_value::<Summary>(value)
                        .with_context(|| format!("line {}: bad summary: {line}", n + 1))?,
                );
            } else {
                let a: Attempt = serde_json::from_value(value)
                    .with_context(|| format!("line {}: bad attempt: {line}", n + 1))?;
                anyhow::ensure!(
                    a.i == attempts.len() as u64,
                    "line {}: attempt {} where {} was due",
                    n + 1,
                    a.i,
                    attempts.len()
                );
                anyhow::ensure!(
                    a.ok == a.answer.is_some(),
                    "line {}: ok and answer disagree: {line}",
                    n + 1
                );
                attempts.push(a);
            }
        }
        let summary = summary.context("no summary line: the probe did not finish")?;
        let expected = Summary::of(&attempts, summary.start_unix_ms);
        anyhow::ensure!(
            summary == expected,
            "summary {summary:?} disagrees with the attempts ({expected:?})"
        );
        Ok(ProbeReport { attempts, summary })
    }

    /// Successful attempts answered by the app named `name`.
    pub fn count(&self, name: &str) -> u64 {
        self.summary.by_name.get(name).copied().unwrap_or(0)
    }

    /// The failed attempts.
    pub fn failures(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().filter(|a| !a.ok)
    }

    /// The set of names that answered, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.summary.by_name.keys().map(String::as_str).collect()
    }
}

impl fmt::Display for ProbeReport {
    /// One line for a failure message: counts, answers, and the first few errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} failed, by answer {:?}",
            self.summary.ok, self.summary.failed, self.summary.by_answer
        )?;
        for a in self.failures().take(3) {
            write!(
                f,
                "; #{} at {} ms: {}",
                a.i,
                a.start_ms,
                a.error.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

/// What `transfer` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    /// The greeting, empty when none was read.
    pub answer: String,
    /// Bytes sent.
    pub bytes: u64,
    /// Bytes echoed back.
    pub received: u64,
    /// Every byte came back, in order.
    pub ok: bool,
    pub secs: f64,
    pub sent_sha256: String,
    pub received_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `rate` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateReport {
    /// Connections that were accepted and greeted.
    pub connections: u64,
    pub failed: u64,
    pub per_sec: f64,
    pub secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Transport of an [`Arrival`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A line of `serve`'s log: a TCP connection accepted or a UDP datagram received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arrival {
    pub proto: Proto,
    pub peer: SocketAddr,
    /// The address the client reached (after any translation on the way).
    pub local: SocketAddr,
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.proto.as_str(), self.peer, self.local)
    }
}

impl Arrival {
    /// Parses one `tcp <peer> <local>` / `udp <peer> <local>` line.
    pub fn parse(line: &str) -> Option<Arrival> {
        let mut words = line.split_whitespace();
        let proto = match words.next()? {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return None,
        };
        let peer = words.next()?.parse().ok()?;
        let local = words.next()?.parse().ok()?;
        words
            .next()
            .is_none()
            .then_some(Arrival { proto, peer, local })
    }

    /// Every arrival in a `serve` log, skipping its other lines.
    pub fn parse_log(log: &str) -> Vec<Arrival> {
        log.lines().filter_map(Arrival::parse).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(i: u64, answer: &str) -> Attempt {
        Attempt {
            i,
            start_ms: i * 10,
            ok: true,
            answer: Some(answer.to_owned()),
            latency_us: Some(120),
            local: Some("10.1.1.2:40000".to_owned()),
            error: None,
        }
    }

    fn failed(i: u64) -> Attempt {
        Attempt {
            i,
            start_ms: i * 10,
            ok: false,
            answer: None,
            latency_us: None,
            local: None,
            error: Some("connection refused".to_owned()),
        }
    }

    fn render(attempts: &[Attempt], summary: &Summary) -> String {
        let mut out = String::new();
        for a in attempts {
            out += &serde_json::to_string(a).unwrap();
            out.push('\n');
        }
        out += &serde_json::to_string(summary).unwrap();
        out.push('\n');
        out
    }

    #[test]
    fn attempts_render_in_the_documented_shape() {
        let line = serde_json::to_string(&ok(0, "c2 10.2.1.3:7000")).unwrap();
        assert_eq!(
            line,
            r#"{"i":0,"start_ms":0,"ok":true,"answer":"c2 10.2.1.3:7000","latency_us":120,"local":"10.1.1.2:40000"}"#
        );
        let line = serde_json::to_string(&failed(3)).unwrap();
        assert_eq!(
            line,
            r#"{"i":3,"start_ms":30,"ok":false,"error":"connection refused"}"#
        );
    }

    #[test]
    fn a_probe_round_trips_and_counts_by_name() {
        let attempts = vec![
            ok(0, "c2 10.2.1.3:7000"),
            failed(1),
            ok(2, "c3 10.3.1.2:7000"),
            ok(3, "c2 10.2.1.128:7000"),
        ];
        let summary = Summary::of(&attempts, 1_700_000_000_000);
        let text = render(&attempts, &summary);
        assert!(text.ends_with(
            "{\"summary\":true,\"ok\":3,\"failed\":1,\"by_name\":{\"c2\":2,\"c3\":1},\
             \"by_answer\":{\"c2 10.2.1.128:7000\":1,\"c2 10.2.1.3:7000\":1,\
             \"c3 10.3.1.2:7000\":1},\"start_unix_ms\":1700000000000}\n"
        ));
        let report = ProbeReport::parse(&text).unwrap();
        assert_eq!(report.attempts, attempts);
        assert_eq!(
            (report.count("c2"), report.count("c3"), report.count("c1")),
            (2, 1, 0)
        );
        assert_eq!(report.names(), ["c2", "c3"]);
        assert_eq!(report.failures().map(|a| a.i).collect::<Vec<_>>(), [1]);
        assert_eq!(report.attempts[0].name(), Some("c2"));
        assert!(report
            .to_string()
            .contains("#1 at 10 ms: connection refused"));
    }

    #[test]
    fn inconsistent_probe_output_is_refused() {
        let attempts = vec![ok(0, "c2 a"), ok(1, "c2 b")];
        let summary = Summary::of(&attempts, 0);
        // No summary: the probe died.
        let partial = render(&attempts, &summary);
        let partial = partial.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(ProbeReport::parse(&partial).is_err());
        // A gap in the sequence.
        let gap = render(&[attempts[1].clone()], &Summary::of(&attempts[1..], 0));
        assert!(ProbeReport::parse(&gap).is_err());
        // A summary that does not add up.
        let mut wrong = summary.clone();
        wrong.ok = 5;
        assert!(ProbeReport::parse(&render(&attempts, &wrong)).is_err());
        // ok without an answer.
        let mut bad = ok(0, "c2 a");
        bad.answer = None;
        assert!(ProbeReport::parse(&render(&[bad], &Summary::default())).is_err());
        assert!(ProbeReport::parse("not json\n").is_err());
    }

    #[test]
    fn serve_logs_parse_into_arrivals() {
        let log = "listening tcp 10.2.1.3:7000\nready\ntcp 10.1.1.2:40112 10.2.1.3:7000\n\
                   udp 10.1.1.3:5353 10.2.1.3:7000\ntcp garbage\nudp 1.2.3.4:1 5.6.7.8:2 extra\n";
        let arrivals = Arrival::parse_log(log);
        assert_eq!(arrivals.len(), 2);
        assert_eq!(arrivals[0].proto, Proto::Tcp);
        assert_eq!(arrivals[0].to_string(), "tcp 10.1.1.2:40112 10.2.1.3:7000");
        assert_eq!(arrivals[1].proto, Proto::Udp);
        assert_eq!(arrivals[1].local, "10.2.1.3:7000".parse().unwrap());
    }
}
