//! The fleet reconciler: for each Fleet, render or find its FleetRevision, read its Devices
//! from the watch cache, plan the rollout, write new targets and the Fleet's status.
//!
//! Everything read comes from reflector stores (watch caches); the only API calls are writes,
//! the rendering of a new template (registry, ConfigMaps), and nothing per device per event.
//! A fleet's devices come summed up ([`crate::rollout::Tally`], kept by the device index as
//! devices change), so a reconcile costs what it moves, not what the fleet holds. Because a
//! cache may lag the writes this controller just made, the index lays the targets it wrote
//! over the cache until the cache shows them, so a quick second reconcile never sees a device
//! as not yet targeted and starts one too many.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgevisor_crds::common::condition::{READY, ROLLOUT_ABORTED};
use edgevisor_crds::fleet::{ArchitectureCounts, FleetStatus};
use edgevisor_crds::fleet_revision::{FleetRevisionSpec, FleetRevisionStatus};
use edgevisor_crds::{Architecture, Device, Fleet, FleetRevision};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::metrics::Metrics;
use crate::registry::{PlatformImage, Registry};
use crate::render::{self, FileContent};
use crate::rollout::{self, FleetView, RolloutMemory};
use crate::status;
use crate::views::{self, TARGETED_AT};

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "edgevisor-controller";
/// The label that ties a FleetRevision to its Fleet.
pub const FLEET_LABEL: &str = "edgevisor.dev/fleet";
const DEFAULT_HISTORY: usize = 10;
/// How long an overlay entry is trusted over the cache.
const OVERLAY_TTL: Duration = Duration::from_secs(120);
/// Most target writes one reconcile makes; the rest follow at once in the next. A rollout to
/// 100,000 devices then shows its status (and its progress) within seconds rather than after
/// every target is written, and a lost lease stops it within one batch.
const WRITES_PER_RECONCILE: usize = 2_000;

/// Errors of one reconcile; each is retried with backoff.
pub use crate::error::Error;

pub mod decide;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub registry: Registry,
    /// Signs every rendered state.
    pub signer: Arc<crate::signing::Signer>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub fleets: Store<Fleet>,
    pub devices: Arc<crate::device_index::DeviceIndex>,
    pub revisions: Store<FleetRevision>,
    /// Parallel target writes.
    pub write_concurrency: usize,
    /// A device not heard from for this long counts as offline.
    pub offline_after: Duration,
    /// What was said on Devices (released, pin refused): `(namespace, device, what)`, so each
    /// is said once per controller.
    pub said_on_devices: Mutex<std::collections::HashSet<(String, String, String)>>,
    /// Set once every store has its initial list: before, an empty cache would look like a
    /// fleet without devices.
    pub synced: std::sync::atomic::AtomicBool,
}

/// Requeue after an error, with a delay that does not hammer the apiserver or the registry.
pub fn error_policy(fleet: Arc<Fleet>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(fleet = %fleet.name_any(), namespace = ?fleet.namespace(), %error, "reconcile failed");
    ctx.metrics.error(error.metric_label());
    Action::requeue(Duration::from_secs(15))
}

/// Reconciles one Fleet.
#[instrument(skip(fleet, ctx), fields(fleet = %fleet.name_any(), namespace = ?fleet.namespace()))]
pub async fn reconcile(fleet: Arc<Fleet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&fleet, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    result
}

async fn reconcile_inner(fleet: &Fleet, ctx: &Context) -> Result<Action, Error> {
    if !ctx.synced.load(std::sync::atomic::Ordering::Acquire) || !ctx.devices.is_ready() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let ns = fleet.namespace().ok_or(Error::NoNamespace)?;
    let name = fleet.name_any();
    let now = Timestamp::now();
    let fleets: Api<Fleet> = Api::namespaced(ctx.client.clone(), &ns);

    // 1. The revision to roll out: the template's (rendered once), or the one asked for.
    let revisions: Vec<Arc<FleetRevision>> = ctx
        .revisions
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()) && r.spec.fleet == name)
        .collect();
    let hash = render::template_hash(&fleet.spec.template);
    let template_name =
        render::revision_name(&name, &hash).map_err(|e| Error::Render(e.to_string()))?;
    let template_revision = match revisions.iter().find(|r| r.name_any() == template_name) {
        Some(r) => r.clone(),
        None => match create_revision(fleet, ctx, &template_name, &hash, &revisions).await {
            Ok(r) => Arc::new(r),
            Err(Error::Render(message)) => {
                write_render_failure(fleet, ctx, &fleets, &message, now).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            Err(e) => return Err(e),
        },
    };
    let update = match &fleet.spec.rollback_to {
        None => template_revision.clone(),
        Some(wanted) => match revisions.iter().find(|r| &r.name_any() == wanted) {
            Some(r) => r.clone(),
            None => {
                let message = format!(
                    "spec.rollbackTo names {wanted}, which is not a retained revision of this fleet"
                );
                write_render_failure(fleet, ctx, &fleets, &message, now).await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
        },
    };
    let update_name = update.name_any();
    let supported: BTreeSet<Architecture> = update
        .spec
        .architectures
        .iter()
        .map(|a| a.architecture)
        .collect();

    // 2. Its devices: the namespace's index sorts them into fleets as they change; a new
    // set of fleets (one came, went or changed its selector) sorts them again.
    let Some(selector) = views::selector(fleet) else {
        write_render_failure(fleet, ctx, &fleets, "spec.selector cannot be parsed", now).await?;
        return Ok(Action::await_change());
    };
    let fleet_selector = |f: &Fleet, selector: kube::core::Selector| decide::FleetSelector {
        name: f.name_any(),
        selector,
        created: f
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    };
    let mut selectors: Vec<decide::FleetSelector> = ctx
        .fleets
        .state()
        .into_iter()
        .filter(|f| f.namespace().as_deref() == Some(ns.as_str()) && f.name_any() != name)
        .filter_map(|f| views::selector(&f).map(|s| fleet_selector(&f, s)))
        .collect();
    selectors.push(fleet_selector(fleet, selector));

    // 3. The plan, from the fleet's tally (kept up by device events; summed again only when
    // what devices are judged against changes).
    let old = fleet.status.as_ref();
    let memory = memory_of(old, fleet.spec.strategy.steps.len());
    let view = FleetView {
        strategy: &fleet.spec.strategy,
        paused: fleet.spec.paused,
        resume: fleet.spec.resume.as_ref(),
        abort: fleet.spec.abort.as_ref(),
        retry: fleet.spec.retry.as_ref(),
        fast_track: update
            .status
            .as_ref()
            .is_some_and(|s| s.completed_at.is_some()),
        update_revision: &update_name,
        stable_revision: old.and_then(|s| s.stable_revision.as_deref()),
        supported: &supported,
        now: now.as_second(),
        batch: WRITES_PER_RECONCILE,
    };
    let steps = fleet.spec.strategy.steps.len();
    let basis = rollout::Basis::of(&view, &memory);
    let decided = ctx.devices.with_namespace(&ns, |devices| {
        devices.expire_written(Instant::now(), OVERLAY_TTL);
        devices.set_fleets(selectors);
        let released = devices.take_released(&name);
        let mine = devices.fleet_mut(&name)?;
        mine.tally.rebase(basis, now.as_second());
        let tally = &mine.tally;
        let pinned = tally.pinned().iter().filter_map(|n| tally.get(n));
        let refused = decide::refuse_pins(pinned.map(|d| &**d), &revisions);
        let plan = rollout::plan_tally(&view, &memory, tally, |n| {
            refused.iter().any(|(d, _)| d == n)
        });
        let overlap = decide::Overlap {
            count: mine.overlapping.len(),
            first: mine
                .overlapping
                .iter()
                .take(rollout::plan::NAMES_SHOWN)
                .map(|n| n.to_string())
                .collect(),
        };
        Some(Decided {
            architectures: architecture_counts(tally, &supported),
            plan,
            refused,
            overlap,
            released,
        })
    });
    let Some(Decided {
        plan,
        architectures,
        refused,
        overlap,
        released,
    }) = decided
    else {
        // Cannot happen (the fleet was just given to the index with the others); planned
        // again shortly rather than panicking.
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    for (device, why) in refused {
        say_once_on_device(ctx, &ns, &device, "PinRefused", why).await;
    }

    // 4. New targets, then the status that reports them.
    write_targets(ctx, &ns, &plan.retarget, now).await?;
    let new_status = status::fleet_status(
        old,
        &plan,
        steps,
        architectures,
        &overlap,
        fleet.meta().generation,
        now,
    );
    if old != Some(&new_status) {
        let patch =
            json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "status": new_status});
        fleets
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
        ctx.metrics.writes.add("fleet_status", 1);
    }
    let old_reason = old
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .map(|c| c.reason.as_str())
        .unwrap_or_default();
    for note in decide::events(old_reason, &memory, &plan, &update_name, steps, &overlap) {
        publish(ctx, fleet, note).await;
    }
    let figures = ctx.devices.with_namespace(&ns, |devices| {
        devices
            .fleet(&name)
            .map(|f| views::fleet_figures(&f.tally, &new_status, steps))
    });
    if let Some(figures) = figures {
        ctx.metrics.fleet(&ns, &name, &figures);
    }

    // 5. Devices that left the fleet but still target its revisions are released (they keep
    // running what they have, and say so); revisions: how many devices use each, and forget
    // the old ones no Device of the namespace uses, in this fleet or not.
    for released in released {
        let note = format!(
            "no longer selected by fleet {name}: it keeps what it runs, and its revision is kept \
             while it uses it"
        );
        say_once_on_device(ctx, &ns, &released, "ReleasedFromFleet", note).await;
    }
    tidy_revisions(
        ctx,
        fleet,
        &ns,
        &revisions,
        &update_name,
        plan.stable_revision.as_deref(),
    )
    .await?;

    info!(
        revision = %update_name,
        phase = ?plan.phase,
        retargeted = plan.retarget.len(),
        devices = plan.counts.devices,
        "reconciled"
    );
    Ok(match plan.requeue_after {
        _ if plan.more => Action::requeue(Duration::ZERO),
        Some(seconds) => Action::requeue(Duration::from_secs(seconds.clamp(1, 300) as u64)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// What the Fleet's status remembers of the rollout.
fn memory_of(status: Option<&FleetStatus>, steps: usize) -> RolloutMemory {
    let Some(status) = status else {
        return RolloutMemory::default();
    };
    let step = match status.current_step.as_deref() {
        Some("done") => steps,
        Some(s) => s.parse().unwrap_or(0),
        None => 0,
    };
    let aborted = status
        .conditions
        .iter()
        .any(|c| c.type_ == ROLLOUT_ABORTED && c.status == "True");
    RolloutMemory {
        revision: status.update_revision.clone(),
        step,
        pause_started_at: status.pause_started_at.as_ref().map(|t| t.0.as_second()),
        aborted,
        retry_attempt: status.retry_attempt,
        failures_since: status.failures_since.as_ref().map(|t| t.0.as_second()),
        progress: status
            .progress_mark
            .clone()
            .zip(status.last_progress_time.as_ref().map(|t| t.0.as_second())),
    }
}

fn architecture_counts(
    tally: &rollout::Tally,
    supported: &BTreeSet<Architecture>,
) -> Vec<ArchitectureCounts> {
    let n = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    tally
        .architectures()
        .iter()
        .filter_map(|(arch, t)| {
            let architecture = (*arch)?;
            Some(ArchitectureCounts {
                architecture,
                devices: n(t.devices),
                updated: n(t.updated),
                ready: n(t.ready),
                failed: n(t.failed),
                supported: supported.contains(&architecture),
            })
        })
        .collect()
}

/// What a reconcile decides with the namespace's devices locked.
struct Decided {
    plan: rollout::Plan,
    architectures: Vec<ArchitectureCounts>,
    refused: Vec<(String, String)>,
    overlap: decide::Overlap,
    released: Vec<rollout::Name>,
}

/// Writes `spec.revision` (and when) on each device, by server-side apply, in parallel.
async fn write_targets(
    ctx: &Context,
    ns: &str,
    retarget: &[(String, String)],
    now: Timestamp,
) -> Result<(), Error> {
    if retarget.is_empty() {
        return Ok(());
    }
    let request = kube::core::Request::new(format!(
        "/apis/edgevisor.dev/v1alpha1/namespaces/{ns}/devices"
    ));
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let at = now.to_string();
    let writes = retarget.iter().cloned().map(|(device, revision)| {
        let patch = json!({
            "apiVersion": "edgevisor.dev/v1alpha1",
            "kind": "Device",
            "metadata": {"name": device, "annotations": {TARGETED_AT: at}},
            "spec": {"revision": revision},
        });
        let request = request.patch(&device, &params, &Patch::Apply(patch));
        async move {
            // The answer (the whole Device) is not read: the watch brings it, and decoding
            // 100,000 of them would take the CPU the apiserver needs on a small node.
            ctx.client
                .request_text(request.map_err(kube::Error::BuildRequest)?)
                .await?;
            Ok::<_, Error>((device, revision))
        }
    });
    let mut results = futures::stream::iter(writes).buffer_unordered(ctx.write_concurrency.max(1));
    let mut first_error = None;
    while let Some(result) = results.next().await {
        match result {
            Ok((device, revision)) => {
                ctx.devices.with_namespace(ns, |devices| {
                    devices.wrote(
                        &device,
                        revision.as_str().into(),
                        now.as_second(),
                        Instant::now(),
                    )
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    ctx.metrics.device_writes(retarget.len());
    Ok(())
}

/// Renders the template and creates its FleetRevision.
async fn create_revision(
    fleet: &Fleet,
    ctx: &Context,
    name: &str,
    hash: &str,
    existing: &[Arc<FleetRevision>],
) -> Result<FleetRevision, Error> {
    let ns = fleet.namespace().ok_or(Error::NoNamespace)?;
    let template = &fleet.spec.template;
    let mut images: Vec<BTreeMap<Architecture, PlatformImage>> = Vec::new();
    for container in &template.containers {
        let mut platforms = ctx
            .registry
            .resolve(&container.image)
            .await
            .map_err(|e| Error::Render(e.to_string()))?;
        for o in &container.image_overrides {
            let mut theirs = ctx
                .registry
                .resolve(&o.image)
                .await
                .map_err(|e| Error::Render(e.to_string()))?;
            match theirs.remove(&o.architecture) {
                Some(image) => {
                    platforms.insert(o.architecture, image);
                }
                None => {
                    return Err(Error::Render(format!(
                        "container {}: image override {} provides no {} image",
                        container.name, o.image, o.architecture
                    )));
                }
            }
        }
        images.push(platforms);
    }
    let files = file_contents(ctx, &ns, fleet).await?;
    let rendered =
        render::render(template, &images, &files).map_err(|e| Error::Render(e.to_string()))?;
    let mut architectures = rendered.architectures;
    for a in &mut architectures {
        a.signature = Some(
            ctx.signer
                .sign(&ns, name, a.architecture.as_str(), &a.state_digest),
        );
    }
    let sequence = existing.iter().map(|r| r.spec.revision).max().unwrap_or(0) + 1;
    let mut revision = FleetRevision::new(
        name,
        FleetRevisionSpec {
            fleet: fleet.name_any(),
            revision: sequence,
            template_hash: hash.to_string(),
            architectures,
            files: rendered.files,
        },
    );
    revision.metadata.namespace = Some(ns.clone());
    revision.metadata.labels = Some([(FLEET_LABEL.to_string(), fleet.name_any())].into());
    revision.metadata.owner_references = fleet.controller_owner_ref(&()).map(|o| vec![o]);
    let api: Api<FleetRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let created = match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &revision,
        )
        .await
    {
        Ok(created) => {
            ctx.metrics.writes.add("fleetrevision", 1);
            created
        }
        // Created by an earlier run whose cache did not show it yet.
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(name).await?,
        Err(e) => return Err(e.into()),
    };
    let note = format!(
        "rendered {name} (revision {sequence}) for {}",
        created.spec.architectures_label()
    );
    publish(ctx, fleet, decide::Note::normal("RevisionCreated", note)).await;
    Ok(created)
}

/// The delivered files' contents, inline or from ConfigMaps and Secrets of the namespace.
async fn file_contents(ctx: &Context, ns: &str, fleet: &Fleet) -> Result<Vec<FileContent>, Error> {
    let mut out = Vec::new();
    for f in &fleet.spec.template.files {
        let secret = f.secret_key_ref.is_some();
        let bytes = if let Some(content) = &f.content {
            content.clone().into_bytes()
        } else if let Some(r) = &f.config_map_key_ref {
            let cm: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            let map = cm.get_opt(&r.name).await?.ok_or_else(|| {
                Error::Render(format!("file {}: ConfigMap {} not found", f.path, r.name))
            })?;
            let text = map
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes());
            let binary = map
                .binary_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|b| b.0.clone());
            text.or(binary).ok_or_else(|| {
                Error::Render(format!(
                    "file {}: ConfigMap {} has no key {}",
                    f.path, r.name, r.key
                ))
            })?
        } else if let Some(r) = &f.secret_key_ref {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let secret = secrets
                .get_opt(&r.name)
                .await
                .map_err(|e| {
                    Error::Render(format!("file {}: reading Secret {}: {e}", f.path, r.name))
                })?
                .ok_or_else(|| {
                    Error::Render(format!("file {}: Secret {} not found", f.path, r.name))
                })?;
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|b| b.0.clone())
                .ok_or_else(|| {
                    Error::Render(format!(
                        "file {}: Secret {} has no key {}",
                        f.path, r.name, r.key
                    ))
                })?
        } else {
            return Err(Error::Render(format!("file {} has no content", f.path)));
        };
        out.push(FileContent {
            path: f.path.clone(),
            mode: f.mode.unwrap_or(0o644).clamp(0, 0o777) as u32,
            bytes,
            secret,
        });
    }
    Ok(out)
}

async fn write_render_failure(
    fleet: &Fleet,
    ctx: &Context,
    fleets: &Api<Fleet>,
    message: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let old = fleet.status.clone().unwrap_or_default();
    let status = status::render_failed_status(&old, message, fleet.meta().generation, now);
    if status == old {
        return Ok(());
    }
    publish(
        ctx,
        fleet,
        decide::Note::warning("RenderFailed", message.to_string()),
    )
    .await;
    let patch = json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "status": status});
    fleets
        .patch_status(
            &fleet.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    ctx.metrics.writes.add("fleet_status", 1);
    Ok(())
}

/// Events for what a human should see: steps reached, pauses, aborts, roll backs, completion.
async fn publish(ctx: &Context, fleet: &Fleet, note: decide::Note) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.into(),
        note: Some(note.message),
        action: "Rollout".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &fleet.object_ref(&())).await {
        Ok(()) => ctx.metrics.writes.add("event", 1),
        Err(error) => warn!(%error, reason = note.reason, "could not record event"),
    }
}

/// An event on a Device (a human reads it with `kubectl describe device`), once per controller
/// for the same device, reason and note.
async fn say_once_on_device(ctx: &Context, ns: &str, device: &str, reason: &str, note: String) {
    let key = (
        ns.to_string(),
        device.to_string(),
        format!("{reason}: {note}"),
    );
    let first = ctx
        .said_on_devices
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key);
    if !first {
        return;
    }
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("edgevisor.dev/v1alpha1".into()),
        kind: Some("Device".into()),
        name: Some(device.to_string()),
        namespace: Some(ns.to_string()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "Rollout".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &reference).await {
        Ok(()) => ctx.metrics.writes.add("event", 1),
        Err(error) => warn!(%error, "could not record event"),
    }
}

/// Updates each revision's device count and deletes revisions beyond `revisionHistoryLimit`
/// that no device uses.
async fn tidy_revisions(
    ctx: &Context,
    fleet: &Fleet,
    ns: &str,
    revisions: &[Arc<FleetRevision>],
    update: &str,
    stable: Option<&str>,
) -> Result<(), Error> {
    let api: Api<FleetRevision> = Api::namespaced(ctx.client.clone(), ns);
    let now = Timestamp::now();
    let names: Vec<String> = revisions.iter().map(|r| r.name_any()).collect();
    let uses: HashMap<&str, crate::device_index::RevisionUse> =
        ctx.devices.with_namespace(ns, |d| {
            names
                .iter()
                .map(|n| (n.as_str(), d.revision_use(n)))
                .collect()
        });
    for (revision, name) in revisions.iter().zip(&names) {
        let count = uses.get(name.as_str()).map_or(0, |u| u.targeted);
        let wanted = FleetRevisionStatus {
            observed_generation: revision.meta().generation,
            architectures: Some(revision.spec.architectures_label()),
            devices: i32::try_from(count).unwrap_or(i32::MAX),
            // Once stable, a revision has reached the whole fleet: going back to it later is
            // fast-tracked.
            completed_at: revision
                .status
                .as_ref()
                .and_then(|s| s.completed_at.clone())
                .or_else(|| (stable == Some(name.as_str())).then_some(Time(now))),
            conditions: revision
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
        };
        if revision.status.as_ref() != Some(&wanted) {
            let patch = json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "FleetRevision", "status": wanted});
            api.patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
            ctx.metrics.writes.add("fleetrevision_status", 1);
        }
    }
    let limit = fleet
        .spec
        .revision_history_limit
        .map_or(DEFAULT_HISTORY, |l| l.max(0) as usize);
    let numbered: Vec<(String, i64)> = revisions
        .iter()
        .zip(&names)
        .map(|(r, n)| (n.clone(), r.spec.revision))
        .collect();
    let prune = decide::revisions_to_prune(
        &numbered,
        |n| uses.get(n).is_some_and(|u| u.referenced > 0),
        update,
        stable,
        fleet.spec.rollback_to.as_deref(),
        limit,
    );
    for old in prune {
        info!(revision = %old, "deleting a revision beyond revisionHistoryLimit");
        match api.delete(&old, &DeleteParams::default()).await {
            Ok(_) => ctx.metrics.writes.add("fleetrevision", 1),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The Fleets a Device event concerns: those selecting it, and the one whose revision it
/// targets (it may have just left that fleet's selector).
pub fn fleets_for_device(fleets: &Store<Fleet>, device: &Device) -> Vec<ObjectRef<Fleet>> {
    let ns = device.namespace().unwrap_or_default();
    let mut out: Vec<ObjectRef<Fleet>> = fleets
        .state()
        .into_iter()
        .filter(|f| f.namespace().as_deref() == Some(ns.as_str()))
        .filter(|f| views::selector(f).is_some_and(|s| views::selects(f, &s, device)))
        .map(|f| ObjectRef::from_obj(&*f))
        .collect();
    for revision in [
        device.spec.revision.as_deref(),
        device
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref()),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(fleet) = views::fleet_of_revision(revision) {
            let r = ObjectRef::new(fleet).within(&ns);
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}
