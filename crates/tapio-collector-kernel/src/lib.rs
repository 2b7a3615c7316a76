//! Tapio kernel collector: process, network, file, security and memory
//! events from the kernel via eBPF (one CO-RE object, `bpf/kernel.bpf.c`).
//!
//! | sub-collector | events | hooks |
//! |---|---|---|
//! | process | `kernel.process.{exec,fork,exit}` | `tp_btf/sched_process_{exec,fork,exit}` (classic tracepoint fallback for exec) |
//! | network | `kernel.network.{connect,accept,close,retransmit,reset}` | `tp_btf/inet_sock_set_state`, `tcp_retransmit_skb`, `tcp_receive_reset`, `tcp_send_reset` |
//! | file | `kernel.file.{open,create,unlink,rename,chmod,chown}` | syscall tracepoints, path prefixes filtered in the kernel |
//! | security | `kernel.security.{credential_change,privileged_exec,ptrace,bpf,mount}` | syscall tracepoints, exec hook |
//! | memory | `kernel.memory.{oom_kill,rss_growth}` | `tp_btf/mark_victim`, `tp_btf/rss_stat` (aggregated in the kernel) |
//!
//! No kprobes or fentry: those are unavailable under kernel lockdown.
//! TCP accepts and closes run in softirq, where the current task is
//! arbitrary; the collector records the owner of each socket at `connect()`
//! / `listen()` (process context) in a socket → owner map and attributes
//! later events to it. The 4-tuple is captured while established, since the
//! kernel releases the local port before the final state change.
//!
//! Controls: every sub-collector can be switched off (its programs are not
//! even loaded); filters on pid, cgroup and comm run in the kernel; a
//! per-cgroup token bucket drops excess events in the kernel, counts them and
//! announces `kernel.throttle.start` / `kernel.throttle.stop`; the ring
//! buffer size from [`KernelConfig`] is applied to the map before load (and
//! read back into the health details). Records travel through the shared
//! [`RingBufReader`]; reserve failures are counted per CPU in the kernel and
//! reported as kernel-stage drops. Every event carries the cgroup id, resolved
//! to pod UID / container id when a [`tapio_core::cgroup::CgroupResolver`] is
//! in the [`CollectorContext`].
//!
//! ```no_run
//! use tapio_collector_kernel::{ExecEvent, KernelCollector, KernelConfig, types};
//! use tapio_core::{Collector, CollectorContext};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let kernel = KernelCollector::new(KernelConfig::default());
//! let mut events = kernel.events()?;
//! kernel.start(CollectorContext::default()).await?; // needs CAP_BPF + CAP_PERFMON
//! while let Some(event) = events.recv().await {
//!     if event.event_type == types::EXEC {
//!         let exec: ExecEvent = event.payload()?;
//!         println!("{} ran {} {:?}", exec.process.pid, exec.filename, exec.args);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Loading needs `CAP_BPF` and `CAP_PERFMON` (or `CAP_SYS_ADMIN`); without
//! them [`Collector::start`] fails with
//! [`CollectorError::MissingPrivilege`] naming the capabilities. The file and
//! security hooks are classic syscall tracepoints and need tracefs mounted at
//! `/sys/kernel/tracing`.

use async_trait::async_trait;
use parking_lot::Mutex;
use tapio_core::bpf::{self, RingBufReader, RingBufReaderConfig};
use tapio_core::clock::BootClock;
use tapio_core::{
    Collector, CollectorBase, CollectorContext, CollectorError, EventReceiver, HealthReport,
};

pub mod config;
pub mod events;
mod program;
mod record;

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    non_camel_case_types,
    unsafe_op_in_unsafe_fn
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/kernel.skel.rs"));
}

pub use config::{FileConfig, FilterConfig, KernelConfig, MemoryConfig, RateLimitConfig};
pub use events::*;

use program::{ExecHook, KernelProgram};
use record::{Converter, KernelRecord};

/// Collector name: the `source` of its events and the prefix of its metrics.
pub const NAME: &str = "kernel";
/// Event type of a process execution (see [`events::types`] for all).
pub const EXEC_EVENT: &str = events::types::EXEC;

/// Ring buffers must be a power-of-two multiple of the page size.
pub(crate) fn ring_size(requested: u32) -> u32 {
    requested
        .max(4096)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The kernel collector. See the crate docs.
pub struct KernelCollector {
    base: CollectorBase,
    config: KernelConfig,
    reader: Mutex<Option<RingBufReader>>,
}

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCollector")
            .field("config", &self.config)
            .field("base", &self.base)
            .finish()
    }
}

impl KernelCollector {
    /// A stopped collector with `config`.
    pub fn new(config: KernelConfig) -> Self {
        Self {
            base: CollectorBase::new(NAME, config.queue_capacity, config.overflow),
            config,
            reader: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Collector for KernelCollector {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, ctx: CollectorContext) -> Result<(), CollectorError> {
        self.base.begin_start(&ctx)?;
        if let Err(message) = config::validate(&self.config) {
            let err = CollectorError::Config {
                collector: NAME.to_string(),
                message,
            };
            self.base.fail_start(&err);
            return Err(err);
        }
        bpf::route_libbpf_logs();
        let hook = ExecHook::detect();
        let page_size = page_size();
        let program = KernelProgram {
            config: self.config.clone(),
            hook,
            self_pid: std::process::id(),
            page_size,
        };
        let converter = Converter {
            clock: BootClock::new(),
            page_size,
            emitter: self.base.emitter(),
        };
        let span = tracing::info_span!("kernel.attach", hook = hook.name());
        let started = span.in_scope(|| {
            RingBufReader::spawn(
                RingBufReaderConfig {
                    thread_name: "tapio-kernel".into(),
                    ..Default::default()
                },
                program,
                self.base.counters().clone(),
                move |record: KernelRecord| converter.emitter.timed(|| converter.convert(record)),
            )
        });
        match started {
            Ok(reader) => {
                for (key, value) in reader.details() {
                    self.base
                        .health_cell()
                        .set_detail(key.clone(), value.clone());
                }
                *self.reader.lock() = Some(reader);
                self.base.health_cell().set_detail("exec_hook", hook.name());
                self.base.finish_start();
                Ok(())
            }
            Err(err) => {
                tracing::error!(parent: &span, error = %err, "attach failed");
                self.base.fail_start(&err);
                Err(err)
            }
        }
    }

    async fn stop(&self) -> Result<(), CollectorError> {
        if !self.base.begin_stop() {
            return Ok(());
        }
        let reader = self.reader.lock().take();
        if let Some(mut reader) = reader {
            // Joining the session thread detaches the links and closes the
            // object; keep it off the async worker.
            tokio::task::spawn_blocking(move || reader.stop())
                .await
                .map_err(|err| CollectorError::Bpf {
                    collector: NAME.to_string(),
                    operation: "stop ring buffer reader".to_string(),
                    source: Box::new(err),
                })?;
        }
        self.base.finish_stop();
        Ok(())
    }

    fn events(&self) -> Result<EventReceiver, CollectorError> {
        self.base.take_events()
    }

    fn health(&self) -> HealthReport {
        self.base.report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_is_power_of_two_pages() {
        assert_eq!(ring_size(0), 4096);
        assert_eq!(ring_size(5000), 8192);
        assert_eq!(ring_size(1 << 20), 1 << 20);
    }
}
