//! Command-line arguments of `runtime` and `evctl` (clap derive only; the binaries
//! are thin).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The edgevisor device runtime: installs, tries, commits and rolls back revisions
/// of containers, and serves the control socket.
#[derive(Debug, Parser)]
#[command(name = "runtime", version)]
pub struct RuntimeArgs {
    /// Storage directory (objects, revisions, pointers, logs).
    #[arg(long, env = "EDGEVISOR_STORAGE", default_value = "/var/lib/edgevisor")]
    pub storage: PathBuf,
    /// Control socket path [default: <storage>/control.sock].
    #[arg(long, env = "EDGEVISOR_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Group (name or gid) that owns the socket and may manage the device.
    #[arg(long, env = "EDGEVISOR_GROUP")]
    pub group: Option<String>,
    /// The device's policy: what a revision may ask of this device (host paths, setuid,
    /// capabilities, the manager role, tmpfs size). JSON; see SECURITY.md. Without the
    /// file the safe default applies [default: /etc/edgevisor/policy.json].
    #[arg(long, env = "EDGEVISOR_POLICY")]
    pub policy: Option<PathBuf>,
    /// OCI runtime CLI (runc or crun).
    #[arg(long, env = "EDGEVISOR_OCI_RUNTIME", default_value = "runc")]
    pub oci_runtime: String,
    /// Bytes to keep free on the storage filesystem; writes that would eat into
    /// them are refused with 507.
    #[arg(long, env = "EDGEVISOR_RESERVE_BYTES", default_value_t = 16 << 20)]
    pub reserve_bytes: u64,
    /// Revisions kept by garbage collection besides committed, trying and factory.
    #[arg(long, env = "EDGEVISOR_RETENTION", default_value_t = 3)]
    pub retention: usize,
    /// Rotate a container's log past this size.
    #[arg(long, env = "EDGEVISOR_LOG_MAX_BYTES", default_value_t = 1 << 20)]
    pub log_max_bytes: u64,
    /// Seconds between SIGTERM and SIGKILL when stopping a container.
    #[arg(long, env = "EDGEVISOR_STOP_GRACE_SECONDS", default_value_t = 3)]
    pub stop_grace_seconds: u64,
    /// Shell command run by the `reboot` command (none: reboot is refused).
    #[arg(long, env = "EDGEVISOR_REBOOT_COMMAND")]
    pub reboot_command: Option<String>,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, default_value = "info", env = "EDGEVISOR_LOG")]
    pub log: String,
}

/// evctl: talk to the edgevisor runtime over its control socket.
///
/// Install a revision with `evctl install state.json --objects DIR --rev v2`, watch it
/// with `evctl progress v2 --watch`, roll back with `evctl run v1`.
#[derive(Debug, Parser)]
#[command(name = "evctl", version)]
pub struct EvctlArgs {
    /// Control socket of the runtime.
    #[arg(
        long,
        short,
        env = "EDGEVISOR_SOCKET",
        default_value = "/var/lib/edgevisor/control.sock"
    )]
    pub socket: PathBuf,
    /// Print the runtime's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: EvctlCommand,
}

#[derive(Debug, Subcommand)]
pub enum EvctlCommand {
    /// List revisions with their status and pointers.
    Steps,
    /// Print a revision's state JSON.
    Show { rev: String },
    /// Upload a state's objects, install it as a revision and (unless --no-run) try it.
    Install {
        /// The state JSON (edgevisor-state@1).
        state: PathBuf,
        /// Directory with the objects, named by sha256 hex (or sha256:<hex>).
        #[arg(long)]
        objects: Option<PathBuf>,
        /// Revision name [default: first 12 hex digits of the state's sha256].
        #[arg(long)]
        rev: Option<String>,
        /// Only install; run later with `evctl run`.
        #[arg(long)]
        no_run: bool,
        /// Wait until the try ends and exit non-zero unless it was committed.
        #[arg(long)]
        wait: bool,
    },
    /// Run (try) a revision on disk: roll forward or roll back.
    Run {
        rev: String,
        /// Wait until the try ends and exit non-zero unless it was committed.
        #[arg(long)]
        wait: bool,
    },
    /// Show a revision's progress.
    Progress {
        rev: String,
        /// Follow until the revision reaches DONE, ERROR or WONTGO.
        #[arg(long)]
        watch: bool,
    },
    /// List objects in the store.
    Objects,
    /// Download an object to a file (or stdout with `-o -`).
    GetObject {
        /// sha256 hex (or sha256:<hex>).
        digest: String,
        #[arg(long, short, default_value = "-")]
        output: PathBuf,
    },
    /// Upload one object file (resumes a partial upload).
    PutObject { file: PathBuf },
    /// List containers of the running revision.
    Containers,
    /// Start, stop or restart a container.
    Container {
        #[arg(value_parser = ["start", "stop", "restart"])]
        action: String,
        name: String,
    },
    /// Print a container's log.
    Logs {
        name: String,
        /// Number of lines.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
    },
    /// Collect revisions beyond retention and unreferenced objects.
    Gc,
    /// Reboot the device (if the runtime has a reboot command).
    Reboot,
    /// Signal that a container is ready (from inside it, or --container as manager).
    Signal {
        #[arg(long)]
        container: Option<String>,
    },
    /// Device or user metadata.
    Meta {
        #[arg(value_parser = ["device", "user"])]
        kind: String,
        /// Key to get (or set, with a value; or delete, with --delete).
        key: Option<String>,
        value: Option<String>,
        #[arg(long)]
        delete: bool,
    },
    /// Version of the runtime.
    Buildinfo,
    /// Print the JSON Schema of edgevisor-state@1 (no runtime needed).
    Schema,
    /// Measure GET requests per second over one keep-alive connection.
    #[command(hide = true)]
    Bench {
        #[arg(default_value = "/steps")]
        path: String,
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Instead of throughput: send a request every --interval-ms for this many seconds,
        /// each on a new connection, and print the p50, p99 and largest latency in seconds.
        #[arg(long)]
        latency_seconds: Option<f64>,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
    },
}
