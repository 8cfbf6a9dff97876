//! Part 3: control-plane scaling.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patchwork_shared::model::ModelGeometry;
use patchwork_worker::engine::{DecodeInput, DenoiseInput, Evaluator, Frames, LoadTest};
use patchwork_worker::model::ModelError;

use super::{ms, planned, run_job, table, tiny_spec, Farm, Options};

pub async fn run(o: &Options) -> anyhow::Result<()> {
    let spec = tiny_spec(65, 208, o.steps);
    let windows = planned(&spec, &ModelGeometry::tiny())?.1.len();
    let mut rows = Vec::new();
    for &workers in &o.workers {
        eprintln!("scaling: {workers} workers");
        let log = Arc::new(Mutex::new(Vec::new()));
        let evaluators = (0..workers)
            .map(|_| {
                let inner = LoadTest::new(ModelGeometry::tiny(), o.delay);
                Arc::new(Recorded { inner, log: log.clone() }) as Arc<dyn Evaluator>
            })
            .collect();
        let mut farm = Farm::start(evaluators, None).await?;
        let timing = run_job(&mut farm.client, spec.clone(), true).await;
        farm.stop().await;
        let timing = timing?;
        let timed = o.steps - 1;
        let measured = timing.steady_step() * timed as u32;
        let ideal = o.delay * (timed * windows.div_ceil(workers)) as u32;
        let (gap, fill) = breakdown(&log.lock().unwrap_or_else(|p| p.into_inner()), windows, workers);
        rows.push(vec![
            workers.to_string(),
            ms(timing.first_step()),
            format!("{timed} x {}", ms(timing.steady_step())),
            ms(ideal),
            ms(measured),
            format!("{:.3}", ideal.as_secs_f64() / measured.as_secs_f64()),
            ms(measured.saturating_sub(ideal) / timed as u32),
            ms(gap),
            ms(fill),
        ]);
    }
    println!(
        "\n### Control-plane scaling (load-test workers, capacity 1, {} ms per evaluation; job 65x208x208, \
         {windows} windows, {} steps, step 1 not counted)\n",
        o.delay.as_millis(),
        o.steps
    );
    table(
        &[
            "workers",
            "step 1 (ms)",
            "steps timed x mean (ms)",
            "ideal (ms)",
            "measured (ms)",
            "efficiency",
            "overhead per step (ms)",
            "idle between steps (ms)",
            "until all workers busy (ms)",
        ],
        &rows,
    );
    Ok(())
}

/// A load-test evaluator that records when each denoise evaluation starts and ends, as the workers see it.
struct Recorded {
    inner: LoadTest,
    log: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

impl Evaluator for Recorded {
    fn geometry(&self) -> &ModelGeometry {
        self.inner.geometry()
    }

    fn denoise(&self, input: &DenoiseInput) -> Result<Vec<f32>, ModelError> {
        let start = Instant::now();
        let output = self.inner.denoise(input);
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((start, Instant::now()));
        output
    }

    fn decode(&self, input: &DecodeInput) -> Result<Frames, ModelError> {
        self.inner.decode(input)
    }
}

/// From the evaluations' (start, end) times, means over steps 2.. of: the time no worker evaluates between
/// the last evaluation of a step and the first of the next (answers travel back, fusion, sampler, the next
/// requests travel out), and the time from a step's first evaluation until `workers` of them have started.
fn breakdown(log: &[(Instant, Instant)], windows: usize, workers: usize) -> (Duration, Duration) {
    let mut log = log.to_vec();
    log.sort();
    let steps: Vec<&[(Instant, Instant)]> = log.chunks_exact(windows).collect();
    let (mut gap, mut fill) = (Duration::ZERO, Duration::ZERO);
    for pair in steps.windows(2) {
        let last_end = pair[0].iter().map(|e| e.1).max().unwrap_or(pair[0][0].1);
        gap += pair[1][0].0.saturating_duration_since(last_end);
        fill += pair[1][workers.min(windows) - 1].0 - pair[1][0].0;
    }
    let n = (steps.len().max(2) - 1) as u32;
    (gap / n, fill / n)
}
