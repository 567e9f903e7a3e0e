//! The SPIRE plugin's attestor: `WorkloadAttestor "k8s"`'s Configure, Validate, Attest,
//! AttestReference and Deinit over whole [`Pipeline`]s.
//!
//! `Configure` parses `plugin_data` into a [`Config`], builds everything new first (a new
//! tracker only if the configuration changes the tracker's own settings, then the kubelet
//! client and fetcher) and swaps the result in only when every step succeeded: a rejected
//! Configure leaves the running pipeline, and only its kernel programs, in place.
//! Attestations already running finish on the configuration they started with. The eBPF
//! tracker starts before the handshake (so the first Attest finds the kernel programs
//! attached and the map seeded). `Deinit` releases both.

use std::sync::{Arc, Mutex, RwLock};

use super::{Pipeline, start_status, tracker_options};
use crate::config::Config;
use crate::plugin::{CancellationToken, ReferenceRequest, WorkloadAttestor};
use crate::status::{Code, Status};
use crate::tracker::{StartError, Tracker, TrackerOptions};

/// How [`K8s`] starts a tracker for a set of options: [`Tracker::start`] in the binary.
pub type StartTracker = fn(&TrackerOptions) -> Result<Tracker, StartError>;

/// The SPIRE `k8s` WorkloadAttestor as a plugin [`WorkloadAttestor`].
pub struct K8s {
    /// The configured pipeline; `None` until the first successful Configure.
    current: RwLock<Option<Arc<Pipeline>>>,
    /// The tracker and the settings it was started with.
    tracker: Mutex<Option<(TrackerOptions, Arc<Tracker>)>>,
    start_tracker: StartTracker,
}

/// Whether a tracker started with `a` serves a configuration asking for `b`.
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
}

impl K8s {
    /// The configured pipeline (SPIRE's `getConfig`: `FailedPrecondition` before Configure).
    fn pipeline(&self) -> Result<Arc<Pipeline>, Status> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Status::new(Code::FailedPrecondition, "not configured"))
    }
}

impl WorkloadAttestor for K8s {
    fn configure(&self, hcl: &str) -> Result<(), Status> {
        let config = Config::parse(hcl).map_err(Status::from)?;
        let want = tracker_options(&config);
        // Held until the swap: the server never overlaps Configures, and this keeps two
        // from starting trackers side by side if a host ever did.
        let mut slot = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        let (tracker, started) = match slot.as_ref() {
            Some((opts, running)) if same_tracker(opts, &want) => (running.clone(), false),
            _ => (
                Arc::new((self.start_tracker)(&want).map_err(start_status)?),
                true,
            ),
        };
        // On failure a tracker started above is dropped here (its programs detached); the
        // running pipeline and tracker were not touched.
        let attestor = Pipeline::new(config, tracker.clone(), |k| std::env::var(k).ok())?;
        if started {
            // The old tracker lives on in attestations still running on the old pipeline,
            // and is detached when the last of them ends.
            *slot = Some((want, tracker));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(attestor));
        Ok(())
    }

    fn validate(&self, hcl: &str) -> Result<Vec<String>, Status> {
        // SPIRE's Validate runs only the plugin_data checks (a missing token file is valid).
        Config::parse(hcl).map(|_| Vec::new()).map_err(Status::from)
    }

    async fn attest(&self, pid: i32, cancel: CancellationToken) -> Result<Vec<String>, Status> {
        let pipeline = self.pipeline()?;
        pipeline.attest(i64::from(pid), cancel.cancelled()).await
    }

    async fn attest_reference(
        &self,
        request: ReferenceRequest,
        cancel: CancellationToken,
    ) -> Result<Vec<String>, Status> {
        let pipeline = self.pipeline()?;
        pipeline.attest_reference(request, cancel).await
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::TrackerMode;

    /// Trackers started by [`procfs_tracker`] (tests in this module only).
    static STARTS: AtomicUsize = AtomicUsize::new(0);

    /// Never loads eBPF, so the test needs no privileges; counts starts.
    fn procfs_tracker(opts: &TrackerOptions) -> Result<Tracker, StartError> {
        STARTS.fetch_add(1, Ordering::SeqCst);
        Tracker::start(&TrackerOptions {
            mode: TrackerMode::Procfs,
            ..opts.clone()
        })
    }

    fn running(k: &K8s) -> (TrackerOptions, Arc<Tracker>) {
        k.tracker.lock().unwrap().clone().expect("a tracker")
    }

    fn pipeline(k: &K8s) -> Arc<Pipeline> {
        k.current.read().unwrap().clone().expect("configured")
    }

    const READ_ONLY: &str = "kubelet_read_only_port = 10255\n";

    // A tokio context: the kubelet client (hyper) is built inside one, as in the plugin.
    #[tokio::test]
    async fn configure_swaps_only_when_every_step_succeeded() {
        let k = K8s::with_tracker_start(procfs_tracker).unwrap();
        k.configure(READ_ONLY).unwrap();
        let (_, first) = running(&k);
        let first_pipeline = pipeline(&k);
        let starts = STARTS.load(Ordering::SeqCst);

        // A tracker change, then a kubelet setting that fails (the CA file is missing).
        let bad = "tracker_max_processes = 2048\nkubelet_ca_path = \"/nonexistent/ca.crt\"\n";
        let e = k.configure(bad).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{e}");
        assert_eq!(
            STARTS.load(Ordering::SeqCst),
            starts + 1,
            "a tracker was built"
        );
        let (opts, still) = running(&k);
        assert!(Arc::ptr_eq(&first, &still), "the old tracker is kept");
        drop(still);
        assert_eq!(
            opts.max_processes,
            crate::config::DEFAULT_TRACKER_MAX_PROCESSES
        );
        assert!(Arc::ptr_eq(&first_pipeline, &pipeline(&k)));
        // The one started for the rejected Configure is gone: only the pipeline and the
        // slot hold the running tracker.
        assert_eq!(
            Arc::strong_count(&first),
            4,
            "running tracker: slot, pipeline and its kubelet attestor, here"
        );

        // The same change with a working kubelet setting is swapped in.
        k.configure(&format!("{READ_ONLY}tracker_max_processes = 2048\n"))
            .unwrap();
        let (opts, second) = running(&k);
        assert_eq!(opts.max_processes, 2048);
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(pipeline(&k).tracker(), &second));

        // Unchanged tracker settings reuse the running tracker.
        let starts = STARTS.load(Ordering::SeqCst);
        k.configure(&format!("{READ_ONLY}tracker_max_processes = 2048\n"))
            .unwrap();
        assert_eq!(STARTS.load(Ordering::SeqCst), starts);
        assert!(Arc::ptr_eq(&running(&k).1, &second));

        k.deinit();
        assert!(k.tracker.lock().unwrap().is_none());
        assert!(k.current.read().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_config_error_changes_nothing() {
        let k = K8s::with_tracker_start(procfs_tracker).unwrap();
        k.configure(READ_ONLY).unwrap();
        let before = pipeline(&k);
        let e = k.configure("tracker = \"sometimes\"").unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.contains("tracker"), "{e}");
        assert!(Arc::ptr_eq(&before, &pipeline(&k)));
    }
}
