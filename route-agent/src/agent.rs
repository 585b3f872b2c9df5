//! The agent's core: one owner of the maps. It takes a catalog, works out what the maps should
//! hold, and applies the plan through a [`Dataplane`], keeping its record of the maps
//! ([`MapState`]) exact: an op that fails stops the run (what was applied is consistent, by
//! the plan's order) and the next reconcile starts from what is really there.

use std::time::Duration;

use isthmus_ebpf::Capacity;

use crate::catalog::Catalog;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::desired::{desired, Desired, Unprogrammed};
use crate::reconcile::{plan, MapState};

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Report {
    pub ops: usize,
    /// The op that failed, if one did; the rest of the plan was not applied.
    pub error: Option<String>,
    pub map_full: bool,
    pub unprogrammed: Vec<Unprogrammed>,
}

pub struct Agent<D> {
    dataplane: D,
    capacity: Capacity,
    state: MapState,
    desired: Desired,
}

impl<D: Dataplane> Agent<D> {
    pub fn new(dataplane: D, capacity: Capacity) -> Self {
        Agent {
            dataplane,
            capacity,
            state: MapState::default(),
            desired: Desired::default(),
        }
    }

    pub fn state(&self) -> &MapState {
        &self.state
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Programs the maps for `catalog`.
    pub fn reconcile(&mut self, catalog: &Catalog) -> Report {
        let state = &self.state;
        self.desired = desired(catalog, self.capacity, |n| state.has(n));
        let ops = plan(&self.desired, &self.state, self.capacity.services);
        let mut report = Report {
            unprogrammed: self.desired.unprogrammed.clone(),
            ..Report::default()
        };
        for op in &ops {
            match self.dataplane.apply(op) {
                Ok(()) => {
                    self.state.apply(op);
                    report.ops += 1;
                }
                Err(e) => {
                    report.map_full = e.is_full();
                    report.error = Some(describe(op, &e));
                    break;
                }
            }
        }
        report
    }
}

fn describe(op: &crate::reconcile::Op, e: &DataplaneError) -> String {
    let mut msg = format!("{op:?}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// How long to wait before retrying a reconcile that failed.
pub const RETRY: Duration = Duration::from_secs(1);
