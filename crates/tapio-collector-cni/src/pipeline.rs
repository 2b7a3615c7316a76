//! The driver: pulls steps from the sources, feeds the [`Correlator`], sweeps
//! timeouts on the [`Clock`], reports source trouble as health problems.

use std::sync::Arc;

use tapio_core::ErrorChain;
use tapio_core::health::HealthParts;

use crate::correlator::{Correlator, CorrelatorConfig, CorrelatorCounters, Output, TableSizes};
use crate::source::{Clock, ExecSource, IpamSource, NetlinkSource, SourceError, Step};

/// Health part names.
pub mod parts {
    /// The BPF exec/netns source.
    pub const EXEC: &str = "exec";
    /// The rtnetlink source.
    pub const NETLINK: &str = "netlink";
    /// The IPAM / netns directory source.
    pub const IPAM: &str = "ipam";
}

/// What one [`Pipeline::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Steps consumed.
    pub steps: usize,
    /// Outputs produced.
    pub outputs: usize,
    /// Sources that failed this round.
    pub source_errors: usize,
}

/// Sources + [`Correlator`] + clock.
///
/// ```
/// use tapio_collector_cni::correlator::CorrelatorConfig;
/// use tapio_collector_cni::pipeline::Pipeline;
/// use tapio_collector_cni::source::{ExecSource, SourceError, Step, SystemClock};
///
/// struct Nothing;
/// impl ExecSource for Nothing {
///     fn poll(&mut self, _: &mut Vec<Step>) -> Result<(), SourceError> { Ok(()) }
/// }
/// let mut pipeline = Pipeline::new(CorrelatorConfig::default(), Box::new(Nothing), None, None,
///                                  Box::new(SystemClock::default()));
/// let report = pipeline.run_once(&mut |_| {});
/// assert_eq!(report.steps, 0);
/// ```
pub struct Pipeline {
    correlator: Correlator,
    exec: Box<dyn ExecSource>,
    netlink: Option<Box<dyn NetlinkSource>>,
    ipam: Option<Box<dyn IpamSource>>,
    clock: Box<dyn Clock>,
    health: Option<Arc<HealthParts>>,
    buf: Vec<Step>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("correlator", &self.correlator)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline over the given sources.
    pub fn new(
        config: CorrelatorConfig,
        exec: Box<dyn ExecSource>,
        netlink: Option<Box<dyn NetlinkSource>>,
        ipam: Option<Box<dyn IpamSource>>,
        clock: Box<dyn Clock>,
    ) -> Self {
        Self::with_counters(
            config,
            Arc::new(CorrelatorCounters::default()),
            exec,
            netlink,
            ipam,
            clock,
        )
    }

    /// [`new`](Self::new) with counters shared with the caller.
    pub fn with_counters(
        config: CorrelatorConfig,
        counters: Arc<CorrelatorCounters>,
        exec: Box<dyn ExecSource>,
        netlink: Option<Box<dyn NetlinkSource>>,
        ipam: Option<Box<dyn IpamSource>>,
        clock: Box<dyn Clock>,
    ) -> Self {
        Self {
            correlator: Correlator::new(config, counters),
            exec,
            netlink,
            ipam,
            clock,
            health: None,
            buf: Vec::with_capacity(256),
        }
    }

    /// Feed `node` (the agent's node model) with the pods the operations
    /// name, and mark their pod-setup anchors (see [`Correlator::with_node`]).
    pub fn with_node(mut self, node: Option<Arc<tapio_core::node::NodeModel>>) -> Self {
        self.correlator = self.correlator.with_node(node);
        self
    }

    /// Report source failures as problems of the parts in [`parts`].
    pub fn with_health(mut self, health: Arc<HealthParts>) -> Self {
        self.health = Some(health);
        self
    }

    /// The correlator's table sizes.
    pub fn sizes(&self) -> TableSizes {
        self.correlator.sizes()
    }

    /// The correlator's counters.
    pub fn counters(&self) -> &Arc<CorrelatorCounters> {
        self.correlator.counters()
    }

    fn note(&self, part: &'static str, result: &Result<(), SourceError>) -> bool {
        match result {
            Ok(()) => {
                if let Some(h) = &self.health
                    && h.problem_of(part).is_some()
                {
                    h.clear(part);
                }
                false
            }
            Err(err) => {
                self.correlator
                    .counters()
                    .source_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let message = ErrorChain(err).to_string();
                tracing::warn!(part, error = %message, "CNI collector source failed");
                if let Some(h) = &self.health {
                    h.problem(part, message);
                }
                true
            }
        }
    }

    /// Poll every source once (steps each delivered even when another
    /// source fails), feed the correlator, then sweep timeouts.
    pub fn run_once(&mut self, out: &mut dyn FnMut(Output)) -> RunReport {
        let mut report = RunReport::default();
        self.buf.clear();
        let r = self.exec.poll(&mut self.buf);
        report.source_errors += usize::from(self.note(parts::EXEC, &r));
        if let Some(netlink) = self.netlink.as_mut() {
            let r = netlink.poll(&mut self.buf);
            report.source_errors += usize::from(self.note(parts::NETLINK, &r));
        }
        if let Some(ipam) = self.ipam.as_mut() {
            let r = ipam.poll(&mut self.buf);
            report.source_errors += usize::from(self.note(parts::IPAM, &r));
        }
        report.steps = self.buf.len();
        let clock = &self.clock;
        let wall = |ns: u64| clock.wall(ns);
        let mut outputs = 0usize;
        let mut counted = |o: Output| {
            outputs += 1;
            out(o)
        };
        for step in self.buf.drain(..) {
            self.correlator.on_step(step, &wall, &mut counted);
        }
        self.correlator.sweep(clock.now_ns(), &wall, &mut counted);
        report.outputs = outputs;
        report
    }

    /// Finish every open operation (see [`Correlator::flush`]).
    pub fn flush(&mut self, out: &mut dyn FnMut(Output)) {
        let clock = &self.clock;
        let wall = |ns: u64| clock.wall(ns);
        self.correlator.flush(clock.now_ns(), &wall, out);
    }

    /// Feed steps directly (benchmarks, replay), without polling sources.
    pub fn feed(&mut self, steps: impl IntoIterator<Item = Step>, out: &mut dyn FnMut(Output)) {
        let clock = &self.clock;
        let wall = |ns: u64| clock.wall(ns);
        for step in steps {
            self.correlator.on_step(step, &wall, out);
        }
    }

    /// Sweep timeouts at `now_ns` without polling.
    pub fn sweep_at(&mut self, now_ns: u64, out: &mut dyn FnMut(Output)) {
        let clock = &self.clock;
        let wall = |ns: u64| clock.wall(ns);
        self.correlator.sweep(now_ns, &wall, out);
    }
}

#[cfg(test)]
mod tests;
