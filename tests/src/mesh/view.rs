//! One gateway's view of the mesh and a round of them, read from `tunctl status -o json`.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

/// Gateways a summary names one by one.
const NAMED_LAGGARDS: usize = 6;

/// One gateway's view of the mesh, from its `tunctl status -o json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayView {
    /// Peers configured or learned.
    pub peers: usize,
    /// Peers with a completed handshake younger than 180 s.
    pub connected: usize,
    /// With the control plane on.
    pub control: Option<ControlView>,
}

/// The control plane part of a [`GatewayView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlView {
    /// Live members learned from signed records.
    pub members: usize,
    /// Sync sessions open, and how many of them are in step.
    pub sessions: usize,
    pub synced: usize,
    /// Remote clusters the catalog knows.
    pub remotes: usize,
    /// Remote clusters whose liveness is not `up`: `(cluster, liveness)`.
    pub not_up: Vec<(String, String)>,
}

impl GatewayView {
    /// Reads a `tunctl status -o json` object; an error names the missing field.
    pub fn from_status(status: &Value) -> Result<GatewayView> {
        let count = |v: &Value, field: &str| -> Result<usize> {
            v[field]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .with_context(|| format!("no numeric {field:?} in the status"))
        };
        let control = match status.get("control") {
            None | Some(Value::Null) => None,
            Some(c) => {
                let members = c["members"]
                    .as_array()
                    .context("no \"members\" list in the control status")?
                    .len();
                let remotes = c["remote_clusters"]
                    .as_array()
                    .context("no \"remote_clusters\" list in the control status")?;
                let not_up = remotes
                    .iter()
                    .filter(|r| r["liveness"] != "up")
                    .map(|r| {
                        (
                            r["cluster"].as_str().unwrap_or("?").to_owned(),
                            r["liveness"].as_str().unwrap_or("?").to_owned(),
                        )
                    })
                    .collect();
                Some(ControlView {
                    members,
                    sessions: count(c, "sessions")?,
                    synced: count(c, "synced_sessions")?,
                    remotes: remotes.len(),
                    not_up,
                })
            }
        };
        Ok(GatewayView {
            peers: count(status, "peers")?,
            connected: count(status, "connected_peers")?,
            control,
        })
    }

    fn members_full(&self, others: usize) -> bool {
        self.control.as_ref().is_some_and(|c| c.members == others)
    }

    fn handshakes_full(&self, others: usize) -> bool {
        self.connected == others
    }

    fn synced_full(&self, others: usize) -> bool {
        self.control.as_ref().is_some_and(|c| c.synced == others)
    }

    /// `members 30, handshakes 29/31, synced 28/30`: what a lagging gateway has.
    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(c) = &self.control {
            let _ = write!(s, "members {}, ", c.members);
        }
        let _ = write!(s, "handshakes {}/{}", self.connected, self.peers);
        if let Some(c) = &self.control {
            let _ = write!(s, ", synced {}/{}", c.synced, c.sessions);
        }
        s
    }
}

/// Every gateway's view at (about) one moment: a round of `tunctl status` calls.
#[derive(Debug, Clone)]
pub struct MeshSnapshot {
    /// Clusters in the mesh.
    pub clusters: usize,
    /// Whether the control plane (members, sync sessions) is part of "full".
    pub control: bool,
    /// Gateway `i`'s view at index `i - 1`, or why it could not be read.
    pub views: Vec<Result<GatewayView, String>>,
}

impl MeshSnapshot {
    fn others(&self) -> usize {
        self.clusters.saturating_sub(1)
    }

    fn all(&self, pred: impl Fn(&GatewayView, usize) -> bool) -> bool {
        let others = self.others();
        self.views
            .iter()
            .all(|v| v.as_ref().is_ok_and(|v| pred(v, others)))
    }

    fn count(&self, pred: impl Fn(&GatewayView, usize) -> bool) -> usize {
        let others = self.others();
        self.views
            .iter()
            .filter(|v| v.as_ref().is_ok_and(|v| pred(v, others)))
            .count()
    }

    /// Every gateway has every other as a member (trivially true without the control plane).
    pub fn members_done(&self) -> bool {
        !self.control || self.all(GatewayView::members_full)
    }

    /// Every gateway has a completed handshake with every other.
    pub fn handshakes_done(&self) -> bool {
        self.all(GatewayView::handshakes_full)
    }

    /// Every gateway has a sync session in step with every other (trivially true without the
    /// control plane).
    pub fn synced_done(&self) -> bool {
        !self.control || self.all(GatewayView::synced_full)
    }

    /// The mesh is formed: members, handshakes and sync sessions all complete.
    pub fn full(&self) -> bool {
        self.members_done() && self.handshakes_done() && self.synced_done()
    }

    /// Gateways (1-based) whose view falls short of the full mesh, or could not be read.
    pub fn lagging(&self) -> Vec<usize> {
        let others = self.others();
        (1..=self.views.len())
            .filter(|&i| match &self.views[i - 1] {
                Err(_) => true,
                Ok(v) => {
                    !v.handshakes_full(others)
                        || (self.control && !(v.members_full(others) && v.synced_full(others)))
                }
            })
            .collect()
    }

    /// Every remote cluster some gateway sees not `up`: `(gateway, cluster, liveness)`.
    pub fn not_up(&self) -> Vec<(usize, String, String)> {
        (1..)
            .zip(&self.views)
            .filter_map(|(i, v)| Some((i, v.as_ref().ok()?.control.as_ref()?)))
            .flat_map(|(i, c)| {
                c.not_up
                    .iter()
                    .map(move |(cluster, l)| (i, cluster.clone(), l.clone()))
            })
            .collect()
    }

    /// One line: how many gateways are complete on each count, then the first laggards by
    /// name, e.g. `members 31 on 32/32, handshakes 31 on 30/32, synced 31 on 29/32; c3:
    /// members 31, handshakes 29/31, synced 30/31; …`.
    pub fn summary(&self) -> String {
        let (n, others) = (self.views.len(), self.others());
        let mut s = String::new();
        if self.control {
            let _ = write!(
                s,
                "members {others} on {}/{n}, ",
                self.count(GatewayView::members_full)
            );
        }
        let _ = write!(
            s,
            "handshakes {others} on {}/{n}",
            self.count(GatewayView::handshakes_full)
        );
        if self.control {
            let _ = write!(
                s,
                ", synced {others} on {}/{n}",
                self.count(GatewayView::synced_full)
            );
        }
        let lagging = self.lagging();
        for &i in lagging.iter().take(NAMED_LAGGARDS) {
            let what = match &self.views[i - 1] {
                Ok(v) => v.describe(),
                Err(e) => e.clone(),
            };
            let _ = write!(s, "; c{i}: {what}");
        }
        if lagging.len() > NAMED_LAGGARDS {
            let _ = write!(s, "; {} more lagging", lagging.len() - NAMED_LAGGARDS);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(members: usize, connected: usize, synced: usize, down: &[&str]) -> Value {
        let remotes: Vec<Value> = (0..3)
            .map(|k| {
                let c = format!("c{}", k + 2);
                let liveness = if down.contains(&c.as_str()) {
                    "down"
                } else {
                    "up"
                };
                json!({"cluster": c, "liveness": liveness})
            })
            .collect();
        json!({
            "peers": 3,
            "connected_peers": connected,
            "control": {
                "members": vec!["m"; members],
                "sessions": 3,
                "synced_sessions": synced,
                "remote_clusters": remotes,
            }
        })
    }

    fn snapshot(views: Vec<Value>) -> MeshSnapshot {
        MeshSnapshot {
            clusters: 4,
            control: true,
            views: views
                .iter()
                .map(|v| GatewayView::from_status(v).map_err(|e| e.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_mesh_is_full_only_when_every_count_is_complete_everywhere() {
        let full = status(3, 3, 3, &[]);
        assert!(snapshot(vec![full.clone(); 4]).full());

        let short = snapshot(vec![
            full.clone(),
            status(2, 3, 3, &[]),
            status(3, 2, 3, &["c3"]),
            full.clone(),
        ]);
        assert!(!short.full());
        assert!(!short.members_done());
        assert!(!short.handshakes_done());
        assert!(short.synced_done());
        assert_eq!(short.lagging(), vec![2, 3]);
        assert_eq!(short.not_up(), vec![(3, "c3".into(), "down".into())]);
        let summary = short.summary();
        assert!(
            summary.starts_with("members 3 on 3/4, handshakes 3 on 3/4, synced 3 on 4/4; c2:"),
            "{summary}"
        );
        assert!(summary.contains("c3: members 3, handshakes 2/3, synced 3/3"));

        // Without the control plane only handshakes count.
        let mut plain = snapshot(vec![json!({"peers": 3, "connected_peers": 3}); 4]);
        plain.control = false;
        assert!(plain.full());
        assert!(plain.lagging().is_empty());
    }

    #[test]
    fn an_unreadable_view_names_its_field_and_is_lagging() {
        let err = GatewayView::from_status(&json!({"peers": 3})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no numeric \"connected_peers\" in the status"
        );
        let mut views = vec![status(3, 3, 3, &[]); 4];
        views[0] = json!({});
        let snap = snapshot(views);
        assert!(!snap.full());
        assert_eq!(snap.lagging(), vec![1]);
    }
}
