//! Part 1: coordinator overhead per step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use patchwork_coordinator::checkpoint::{self, Checkpoint};
use patchwork_coordinator::store::JobStore;
use patchwork_shared::model::ModelGeometry;
use patchwork_shared::noise::gaussian_noise;
use patchwork_shared::pb;
use patchwork_shared::sampler::{FlowSampler, Sampler};
use patchwork_shared::spec::JobSpec;
use patchwork_shared::windows::{extract, Fusion, WindowPlan};
use patchwork_shared::wire;
use patchwork_worker::engine::{Engine, Evaluator, ModelSource};

use super::{load_test, ms, planned, run_job, table, tiny_spec, wan_spec, Farm, Options, PROMPT};

pub async fn run(o: &Options) -> anyhow::Result<()> {
    let spec = tiny_spec(33, 128, o.steps);
    let g = ModelGeometry::tiny();
    let windows = planned(&spec, &g)?.1.len();
    eprintln!("overhead: loading the tiny model");
    let engine: Arc<dyn Evaluator> =
        Arc::new(tokio::task::spawn_blocking(|| Engine::load(&ModelSource::Tiny, DType::F32, &Device::Cpu)).await??);
    let mut rows = Vec::new();
    let runs: Vec<(String, Vec<Arc<dyn Evaluator>>)> = vec![
        ("tiny model (real)".into(), vec![engine.clone()]),
        ("load test, 0 ms".into(), load_test(1, Duration::ZERO)),
        ("load test, 0 ms".into(), load_test(windows, Duration::ZERO)),
    ];
    let mut real = None;
    for (name, evaluators) in runs {
        let workers = evaluators.len();
        eprintln!("overhead: {name}, {workers} workers");
        let mut farm = Farm::start(evaluators, None).await?;
        let timing = run_job(&mut farm.client, spec.clone(), true).await;
        farm.stop().await;
        let timing = timing?;
        let step = timing.steady_step();
        let real_step = *real.get_or_insert(step);
        rows.push(vec![
            name,
            workers.to_string(),
            ms(timing.first_step()),
            ms(step),
            format!("{:.1}%", 100.0 * step.as_secs_f64() / real_step.as_secs_f64()),
        ]);
    }
    println!("\n### Coordinator overhead per step (tiny job 33x128x128, {windows} windows, {} steps)\n", o.steps);
    table(&["evaluator", "workers", "step 1 (ms)", "steps 2.. mean (ms)", "share of the real step"], &rows);

    let mut rows = Vec::new();
    let jobs = [
        ("tiny 33x128x128", tiny_spec(33, 128, o.steps), ModelGeometry::tiny()),
        ("tiny 65x208x208 (scaling job)", tiny_spec(65, 208, o.steps), ModelGeometry::tiny()),
        ("1.3B 81x480x832", wan_spec(81), ModelGeometry::wan2_1_t2v_1_3b()),
        ("1.3B 161x480x832", wan_spec(161), ModelGeometry::wan2_1_t2v_1_3b()),
    ];
    for (name, spec, g) in jobs {
        eprintln!("overhead: coordinator work for {name}");
        let (spec, plan) = planned(&spec, &g)?;
        let work = tokio::task::spawn_blocking(move || coordinator_work(&spec, &plan)).await??;
        let total: Duration = work.parts[..5].iter().sum();
        let mut row = vec![name.to_string(), work.windows.to_string(), work.values.to_string()];
        row.extend(work.parts[..5].iter().map(|&d| ms(d)));
        row.push(ms(total));
        row.push(ms(work.parts[5]));
        rows.push(row);
    }
    println!("\n### Coordinator CPU work per step, timed in-process (median of repeats; no gRPC)\n");
    table(
        &[
            "job",
            "windows",
            "latent values",
            "extract + encode + clone (ms)",
            "decode answers (ms)",
            "fuse (ms)",
            "sampler (ms)",
            "store updates (ms)",
            "total (ms)",
            "checkpoint write, not in total (ms)",
        ],
        &rows,
    );
    Ok(())
}

struct Work {
    windows: usize,
    values: usize,
    /// Extract + encode + clone, decode, fuse, sampler, store updates; then a checkpoint write (latent and
    /// sampler state, fsynced), which runs only on the steps a checkpoint is due.
    parts: [Duration; 6],
}

/// The coordinator's work in one step, done as `runner.rs` does it, timed piece by piece: each window's
/// slice is extracted and encoded into a request (which the dispatch closure clones), each answer is
/// decoded and checked, the outputs are fused, the sampler steps on candle tensors, and the job store is
/// updated twice per window (dispatch, done) and once per step, each update cloning the job for watchers.
fn coordinator_work(spec: &JobSpec, plan: &WindowPlan) -> anyhow::Result<Work> {
    let shape = plan.shape;
    let latent = gaussian_noise(spec.seed, shape.len());
    let fusion = Fusion::new(plan);
    // What workers answer, encoded outside the timing (workers do that).
    let answers: Vec<pb::DenoiseResponse> = plan
        .windows
        .iter()
        .map(|w| {
            let dims = w.bbox.latent_shape(shape.channels).dims();
            pb::DenoiseResponse {
                fence: None,
                output: Some(wire::f32_tensor(&dims, &extract(&latent, shape, &w.bbox))),
            }
        })
        .collect();
    let store = JobStore::new(10);
    let id = "0123456789abcdef".to_string();
    store.submit(id.clone(), spec.clone(), "").map_err(|e| anyhow::anyhow!("{e}"))?;
    store.update(&id, |j| {
        j.progress.get_or_insert_with(Default::default).windows =
            (0..plan.len()).map(|i| pb::WindowProgress { index: i as u32, ..Default::default() }).collect();
    });
    let mut sampler = FlowSampler::new(spec.sampler, 50, spec.shift)?;
    let mut samples: Vec<[Duration; 6]> = Vec::new();
    let checkpoints = tempfile::tempdir()?;
    let budget = Instant::now();
    while samples.len() < 3 || (samples.len() < 15 && budget.elapsed() < Duration::from_secs(3)) {
        let mut parts = [Duration::ZERO; 6];
        let t = Instant::now();
        let mut sent = 0;
        for w in &plan.windows {
            let slice = extract(&latent, shape, &w.bbox);
            let dims = w.bbox.latent_shape(shape.channels).dims();
            let request = pb::DenoiseRequest {
                fence: None,
                latent: Some(wire::f32_tensor(&dims, &slice)),
                timestep: 999.0,
                prompt: PROMPT.into(),
                negative_prompt: String::new(),
                guidance_scale: 5.0,
                frame_timesteps: Vec::new(),
            };
            let copy = request.clone();
            sent += copy.latent.map_or(0, |l| l.data.len());
        }
        parts[0] = t.elapsed();
        let t = Instant::now();
        let mut outputs = Vec::with_capacity(answers.len());
        for (w, answer) in plan.windows.iter().zip(&answers) {
            let dims = w.bbox.latent_shape(shape.channels).dims();
            outputs.push(wire::read_f32("output", answer.output.as_ref(), Some(&dims))?.1);
        }
        parts[1] = t.elapsed();
        let t = Instant::now();
        let refs: Vec<&[f32]> = outputs.iter().map(Vec::as_slice).collect();
        let velocity = fusion.fuse(&refs)?;
        parts[2] = t.elapsed();
        let t = Instant::now();
        let dims = shape.dims();
        let v = Tensor::from_vec(velocity, dims.as_slice(), &Device::Cpu)?;
        let x = Tensor::from_slice(latent.as_slice(), dims.as_slice(), &Device::Cpu)?;
        let next = sampler.step(&v, &x)?.flatten_all()?.to_vec1::<f32>()?;
        parts[3] = t.elapsed();
        let t = Instant::now();
        for index in 0..plan.len() {
            for worker in ["w1", ""] {
                store.update(&id, |j| {
                    if let Some(w) = j.progress.as_mut().and_then(|p| p.windows.get_mut(index)) {
                        w.worker = worker.to_string();
                    }
                });
            }
        }
        store.update(&id, |j| j.progress.get_or_insert_with(Default::default).step += 1);
        parts[4] = t.elapsed();
        let t = Instant::now();
        let step = sampler.step_index();
        let checkpoint = Checkpoint { job_id: id.clone(), step, dims, latent: next, sampler: sampler.clone() };
        checkpoint::write(&checkpoints.path().join("job.ckpt"), &checkpoint)?;
        parts[5] = t.elapsed();
        let next = checkpoint.latent;
        anyhow::ensure!(next.len() == latent.len() && sent > 0, "lost values");
        samples.push(parts);
    }
    let median = |i: usize| {
        let mut v: Vec<Duration> = samples.iter().map(|s| s[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    Ok(Work { windows: plan.len(), values: shape.len(), parts: [0, 1, 2, 3, 4, 5].map(median) })
}
