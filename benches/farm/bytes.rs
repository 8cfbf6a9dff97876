//! Part 2: bytes per step per window.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use patchwork_shared::model::ModelGeometry;
use patchwork_shared::pb;
use patchwork_shared::wire;
use prost::Message;

use super::{load_test, mib, planned, run_job, table, tiny_spec, wan_spec, Farm, Traffic};

pub async fn run() -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let jobs = [
        ("tiny 33x128x128", tiny_spec(33, 128, 3), ModelGeometry::tiny()),
        ("tiny 65x208x208 (scaling job)", tiny_spec(65, 208, 3), ModelGeometry::tiny()),
        ("1.3B 81x480x832", wan_spec(81), ModelGeometry::wan2_1_t2v_1_3b()),
        ("1.3B 161x480x832", wan_spec(161), ModelGeometry::wan2_1_t2v_1_3b()),
    ];
    for (index, (name, spec, g)) in jobs.into_iter().enumerate() {
        let (valid, plan) = planned(&spec, &g)?;
        let shape = plan.shape;
        let windows = plan.len();
        let (mut payload, mut request, mut response) = (0, 0, 0);
        let mut dims_seen = Vec::new();
        for w in &plan.windows {
            let dims = w.bbox.latent_shape(shape.channels).dims();
            let values = vec![0.5f32; dims.iter().product()];
            let fence = pb::Fence {
                term: 0,
                job_id: "0123456789abcdef".into(),
                step: valid.steps as u32 - 1,
                window: w.index as u32,
                attempt: 0,
            };
            let tensor = wire::f32_tensor(&dims, &values);
            payload += tensor.data.len();
            request += pb::DenoiseRequest {
                fence: Some(fence.clone()),
                latent: Some(tensor.clone()),
                timestep: 999.0,
                prompt: valid.segments[0].prompt.clone(),
                negative_prompt: valid.negative_prompt.clone(),
                guidance_scale: valid.guidance_scale as f32,
                frame_timesteps: Vec::new(),
            }
            .encoded_len();
            response += pb::DenoiseResponse { fence: Some(fence), output: Some(tensor) }.encoded_len();
            let text = format!("{}x{}x{}x{}", dims[0], dims[1], dims[2], dims[3]);
            if !dims_seen.contains(&text) {
                dims_seen.push(text);
            }
        }
        // Measured on the tiny job only: the other shapes would need that model's worker.
        let measured = if index == 0 {
            eprintln!("bytes: measuring {name} through a proxy");
            let one = traffic_of(tiny_spec(33, 128, 1)).await?;
            let three = traffic_of(tiny_spec(33, 128, 3)).await?;
            let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 2.0 / windows as f64;
            format!("{:.0} / {:.0}", per(one.0, three.0), per(one.1, three.1))
        } else {
            "-".to_string()
        };
        let avg = |n: usize| format!("{:.0}", n as f64 / windows as f64);
        rows.push(vec![
            name.to_string(),
            windows.to_string(),
            dims_seen.join(", "),
            avg(payload),
            avg(request),
            avg(response),
            measured,
            mib(request + response),
        ]);
    }
    println!("\n### Bytes per denoising step (per window, averaged over the plan's windows)\n");
    table(
        &[
            "job",
            "windows",
            "window latent",
            "f32 payload each way (B)",
            "request, computed (B)",
            "response, computed (B)",
            "measured on the wire, to / from worker (B)",
            "whole step, computed (MiB)",
        ],
        &rows,
    );
    Ok(())
}

/// Bytes each way between coordinator and a zero-delay worker for a whole job.
async fn traffic_of(spec: pb::JobSpec) -> anyhow::Result<(u64, u64)> {
    let traffic = Arc::new(Traffic::default());
    let mut farm = Farm::start(load_test(1, Duration::ZERO), Some(traffic.clone())).await?;
    let result = run_job(&mut farm.client, spec, false).await;
    let counted = (traffic.to_worker.load(Ordering::Relaxed), traffic.from_worker.load(Ordering::Relaxed));
    farm.stop().await;
    result?;
    Ok(counted)
}
