//! Command-line surface. `main` maps every outcome to an exit code here, in one place:
//! 0 success, 1 the operation failed (the error says why), 2 usage error.
//!
//! Each subcommand lives in its own file; this file only parses, dispatches and reports.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::status::Status;

mod check_config;
mod input;
mod install;
mod live;
mod logger;
mod plugin;
mod replay;
mod resolve;

#[derive(Debug, Parser)]
#[command(
    name = "attestor",
    version,
    about = "eBPF-assisted Kubernetes workload attestor (a SPIRE k8s WorkloadAttestor plugin)",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve a PID to its cgroup and show which source answered.
    Resolve(resolve::ResolveArgs),
    /// Compute the k8s selectors of a workload, exactly as SPIRE's k8s attestor would.
    Attest(AttestArgs),
    /// Explain a live attestation step by step: PID → cgroup → container → pod → selectors.
    Explain(live::ExplainArgs),
    /// Validate a plugin_data file (HCL, or JSON if it is a JSON object).
    CheckConfig {
        /// The plugin_data file; `-` reads stdin. At most 1 MiB.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Copy this binary to DEST (atomically, read back and checked) and print its sha256:
    /// what the DaemonSet's init container runs from the FROM-scratch image.
    Install {
        /// Where the SPIRE agent starts the plugin (`plugin_cmd`), e.g.
        /// /opt/spire/plugins/attestor. Its directory must exist.
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
}

/// Where the workload comes from. Replay takes recorded files; the group leaves room for a
/// live source (`--pid`) that conflicts with them.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["cgroup_file", "pid", "object"])))]
struct AttestArgs {
    /// Live: the workload's PID (host PID namespace); needs root and a reachable kubelet.
    #[arg(long, allow_negative_numbers = true, conflicts_with_all = ["cgroup_file", "pods_file"])]
    pid: Option<i64>,
    /// Live, Broker API: a Kubernetes object reference `<plural>.<group>` (`pods.core`,
    /// `deployments.apps`), with --name (and --namespace) and/or --uid, attested as SPIRE's
    /// AttestReference does (the kubelet, then the API server).
    #[arg(long, value_name = "PLURAL.GROUP", conflicts_with_all = ["cgroup_file", "pods_file", "pid"])]
    object: Option<String>,
    /// With --object: the object's namespace (namespaced resources).
    #[arg(long, requires = "object")]
    namespace: Option<String>,
    /// With --object: the object's name.
    #[arg(long, requires = "object")]
    name: Option<String>,
    /// With --object: the object's UID (alone, or checked against the named object).
    #[arg(long, requires = "object")]
    uid: Option<String>,
    /// Attest as this Broker API caller (its SPIFFE ID), as the agent passes it: the
    /// broker must be configured (`experimental.broker`), its pod_reference_scope and
    /// access_policy apply. With --pid: a WorkloadPIDReference.
    #[arg(long, value_name = "SPIFFE_ID", conflicts_with_all = ["cgroup_file", "pods_file"])]
    broker: Option<String>,
    /// Replay: the workload's /proc/<pid>/cgroup file (cgroup v2 `0::/path` or v1 lines);
    /// `-` reads stdin. At most 256 KiB.
    #[arg(long, value_name = "FILE", requires = "pods_file")]
    cgroup_file: Option<PathBuf>,
    /// Replay: a kubelet `/pods` response body; it never changes, so a container that is not
    /// in it gives SPIRE's give-up result at once. `-` reads stdin. At most 64 MiB, as from
    /// the kubelet.
    #[arg(long, value_name = "FILE", requires = "cgroup_file")]
    pods_file: Option<PathBuf>,
    /// plugin_data file: HCL, or JSON if the file is a JSON object; `-` reads stdin. At most
    /// 1 MiB.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `text`: one `k8s:` selector per line. `json`: {"selectors":[…]} or {"error":{…}}.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

/// A failed command: the status to report, how to report it, and any further problems
/// (e.g. every configuration error after the first).
struct Failure {
    status: Status,
    format: OutputFormat,
    notes: Vec<Status>,
}

impl Failure {
    fn text(status: Status) -> Self {
        Failure {
            status,
            format: OutputFormat::Text,
            notes: Vec::new(),
        }
    }

    /// Text goes to stderr (`error: <Code>: <message>`); JSON to stdout, so scripts read one
    /// stream whatever happened.
    fn report(&self) {
        match self.format {
            OutputFormat::Text => {
                eprintln!("error: {}", self.status);
                for note in &self.notes {
                    eprintln!("error: {note}");
                }
            }
            OutputFormat::Json => println!("{}", error_json(&self.status)),
        }
    }
}

/// `{"error":{"code":…,"message":…}}`: how every subcommand's JSON output says it failed.
fn error_json(status: &Status) -> serde_json::Value {
    serde_json::json!({"error": {"code": status.code_name(), "message": status.message}})
}

/// Reads and validates a plugin_data file (SPIRE's defaults without one).
fn load_config(path: Option<&std::path::Path>) -> Result<crate::config::Config, Status> {
    match path {
        Some(path) => {
            let text = input::CONFIG.read_text(path)?;
            crate::config::Config::parse(&text).map_err(Status::from)
        }
        None => Ok(crate::config::Config::default()),
    }
}

/// Prints selector values with the `k8s:` prefix: one per line, or `{"selectors":[…]}`.
fn print_selectors(selectors: &[String], format: OutputFormat) {
    match format {
        OutputFormat::Text => {
            for s in selectors {
                println!("k8s:{s}");
            }
        }
        OutputFormat::Json => {
            let prefixed: Vec<String> = selectors.iter().map(|s| format!("k8s:{s}")).collect();
            println!("{}", serde_json::json!({ "selectors": prefixed }));
        }
    }
}

/// The AttestReference request `attest` arguments ask for: `--object`, or `--pid` with
/// `--broker`; `None` for a plain PID attestation or a replay.
fn reference(args: &AttestArgs) -> Option<Result<crate::plugin::ReferenceRequest, Status>> {
    use prost::Message as _;

    use crate::plugin::proto::broker::{
        KubernetesObjectKey, KubernetesObjectReference, KubernetesObjectType,
    };
    let callers: Vec<String> = args.broker.iter().cloned().collect();
    if let Some(object) = &args.object {
        let Some((plural, group)) = object.split_once('.') else {
            return Some(Err(Status::new(
                crate::status::Code::InvalidArgument,
                format!(
                    "--object must be <plural>.<group> (pods.core, deployments.apps), got {}",
                    crate::goquote::go_quote(object)
                ),
            )));
        };
        let key = (args.name.is_some() || args.namespace.is_some()).then(|| KubernetesObjectKey {
            namespace: args.namespace.clone().unwrap_or_default(),
            name: args.name.clone().unwrap_or_default(),
        });
        let reference = KubernetesObjectReference {
            r#type: Some(KubernetesObjectType {
                plural: plural.to_string(),
                group: group.to_string(),
            }),
            key,
            uid: args.uid.clone().unwrap_or_default(),
        };
        return Some(Ok(crate::plugin::ReferenceRequest {
            reference: Some(prost_types::Any {
                type_url: crate::plugin::KUBERNETES_OBJECT_REFERENCE_TYPE_URL.to_string(),
                value: reference.encode_to_vec(),
            }),
            broker_caller_ids: callers,
        }));
    }
    match (args.pid, callers.is_empty()) {
        (Some(pid), false) => Some(match i32::try_from(pid) {
            Ok(pid) => Ok(crate::plugin::ReferenceRequest::pid(pid, callers)),
            Err(_) => Err(Status::new(
                crate::status::Code::InvalidArgument,
                format!("--pid {pid} does not fit a WorkloadPIDReference (int32)"),
            )),
        }),
        _ => None,
    }
}

/// Parses the command line, runs the subcommand and returns the process exit code.
pub fn main() -> i32 {
    // Started by a SPIRE agent (magic cookie in the environment): plugin mode, whatever the
    // arguments (`plugin_args`) are. It installs its own hclog logger.
    if crate::plugin::is_plugin_mode() {
        return plugin::run();
    }
    logger::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        None => {
            print_plugin_help();
            // As go-plugin's Serve does when the cookie is missing.
            return 1;
        }
        Some(Command::Attest(args)) => match (&args.cgroup_file, args.pid, reference(&args)) {
            (Some(cgroup_file), _, _) => replay::run(cgroup_file, args.pods_file.as_deref(), &args),
            (None, _, Some(request)) => match request {
                Ok(request) => live::attest_reference(request, args.config.as_deref(), args.output),
                Err(status) => Err(Failure::text(status)),
            },
            (None, Some(pid), None) => live::attest(pid, args.config.as_deref(), args.output),
            // clap's `source` group requires one source.
            (None, None, None) => Err(Failure::text(Status::new(
                crate::status::Code::InvalidArgument,
                "attest needs a workload source: --pid, --object, or --cgroup-file with --pods-file",
            ))),
        },
        Some(Command::Explain(args)) => live::explain(&args),
        Some(Command::CheckConfig { file }) => check_config::run(&file),
        Some(Command::Resolve(args)) => resolve::run(&args),
        Some(Command::Install { dest }) => install::run(&dest),
    };
    match result {
        Ok(()) => 0,
        Err(failure) => {
            failure.report();
            1
        }
    }
}

fn print_plugin_help() {
    eprintln!(
        "This binary is a plugin: the SPIRE agent's WorkloadAttestor \"k8s\" (eBPF-assisted).\n\
         It is not meant to be run directly. Configure the agent with:\n\n\
         \x20   WorkloadAttestor \"k8s\" {{\n\
         \x20       plugin_cmd = \"/opt/spire/plugins/attestor\"\n\
         \x20       plugin_checksum = \"<sha256sum of the binary>\"\n\
         \x20       plugin_data {{ … the k8s attestor's settings … }}\n\
         \x20   }}\n\n\
         See deploy/README.md. Operator subcommands: `attestor --help`."
    );
}
