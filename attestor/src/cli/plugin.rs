//! Plugin mode of the `attestor` binary: the SPIRE agent's `WorkloadAttestor "k8s"`.
//!
//! [`K8s`] is the plugin's [`Attestor`]: `Configure` parses `plugin_data` into a [`Config`],
//! builds a new [`attest::Attestor`] (kubelet client, fetcher) on the shared tracker and swaps
//! it in atomically; attestations already running finish on the configuration they started
//! with. The eBPF tracker starts before the handshake (so the first Attest finds the kernel
//! programs attached and the map seeded) and is replaced only when a Configure changes its
//! own settings (`tracker`, `tracker_max_processes`). `Deinit` releases both.

use std::sync::{Arc, Mutex, RwLock};

use super::live::tracker_options;
use crate::attest;
use crate::config::Config;
use crate::plugin::{self, Attestor, CancellationToken};
use crate::status::{Code, Status};
use crate::tracker::{StartError, Tracker, TrackerMode, TrackerOptions};

/// How [`K8s`] starts a tracker for a set of options: [`Tracker::start`] in the binary.
pub type StartTracker = fn(&TrackerOptions) -> Result<Tracker, StartError>;

/// The SPIRE `k8s` WorkloadAttestor as a plugin [`Attestor`].
pub struct K8s {
    /// The configured pipeline; `None` until the first successful Configure.
    current: RwLock<Option<Arc<attest::Attestor>>>,
    /// The tracker and the settings it was started with.
    tracker: Mutex<Option<(TrackerOptions, Arc<Tracker>)>>,
    start_tracker: StartTracker,
}

fn same_tracker(a: &TrackerOptions, b: &TrackerOptions) -> bool {
    a.mode == b.mode && a.max_processes == b.max_processes
}

impl K8s {
    /// What the binary runs: trackers as configured (eBPF unless `tracker = "procfs"`).
    pub fn start() -> Result<K8s, String> {
        Self::with_tracker_start(Tracker::start)
    }

    /// [`K8s::start`] with another way to start trackers. The plugin fuzz target forces
    /// `procfs` with it, so that thousands of Configures per second do not load eBPF
    /// programs; every other step (config, kubelet settings, the pipeline) is the binary's.
    pub fn with_tracker_start(start_tracker: StartTracker) -> Result<K8s, String> {
        // SPIRE's defaults (`tracker = "auto"`): a Configure that keeps them reuses this.
        let opts = tracker_options(&Config::default());
        let tracker = start_tracker(&opts).map_err(|e| e.to_string())?;
        match tracker.fallback_reason() {
            None => {
                let cgroup2 = tracker
                    .cgroupfs()
                    .map(|fs| fs.mount_point().display().to_string())
                    .unwrap_or_default();
                log::info!(cgroup2 = cgroup2; "eBPF process tracker attached")
            }
            Some(why) => {
                log::warn!(reason = why; "eBPF process tracker not in use: answering from /proc")
            }
        }
        Ok(K8s {
            current: RwLock::new(None),
            tracker: Mutex::new(Some((opts, Arc::new(tracker)))),
            start_tracker,
        })
    }

    /// The tracker `config` asks for: the running one if its settings match, else a new one.
    fn tracker_for(&self, config: &Config) -> Result<Arc<Tracker>, Status> {
        let want = tracker_options(config);
        let mut slot = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((opts, tracker)) = slot.as_ref()
            && same_tracker(opts, &want)
        {
            return Ok(tracker.clone());
        }
        let tracker = Arc::new((self.start_tracker)(&want).map_err(|e| {
            let code = if want.mode == TrackerMode::Ebpf {
                Code::FailedPrecondition
            } else {
                Code::Internal
            };
            Status::new(code, e.to_string())
        })?);
        *slot = Some((want, tracker.clone()));
        Ok(tracker)
    }
}

impl Attestor for K8s {
    fn configure(&self, hcl: &str) -> Result<(), Status> {
        let config = Config::parse(hcl).map_err(Status::from)?;
        let tracker = self.tracker_for(&config)?;
        let attestor = attest::Attestor::new(config, tracker, |k| std::env::var(k).ok())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(attestor));
        Ok(())
    }

    fn validate(&self, hcl: &str) -> Result<Vec<String>, Status> {
        // SPIRE's Validate runs only the plugin_data checks (a missing token file is valid).
        Config::parse(hcl).map(|_| Vec::new()).map_err(Status::from)
    }

    async fn attest(&self, pid: i32, cancel: CancellationToken) -> Result<Vec<String>, Status> {
        let attestor = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Status::new(Code::FailedPrecondition, "not configured"))?;
        attestor.attest(i64::from(pid), cancel.cancelled()).await
    }

    fn deinit(&self) {
        // Dropping the last Arc detaches the kernel programs and frees the maps.
        self.current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

pub fn run() -> i32 {
    plugin::run(K8s::start)
}
