use patchwork_shared::noise::gaussian_noise;

use super::*;

const DIMS: [usize; 4] = [16, 3, 4, 6];

fn tensor(values: Vec<f32>) -> Tensor {
    Tensor::from_vec(values, DIMS.as_slice(), &Device::Cpu).unwrap()
}

/// Runs `sampler` from `latent` for `steps` steps with seeded velocities (seed = step).
fn run(sampler: &mut FlowSampler, latent: Vec<f32>, from: usize, to: usize) -> Vec<f32> {
    let mut x = tensor(latent);
    for step in from..to {
        let v = tensor(gaussian_noise(1000 + step as u64, x.elem_count()));
        x = sampler.step(&v, &x).unwrap();
    }
    x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_resumed_run_ends_exactly_where_the_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [SamplerKind::UniPc, SamplerKind::Euler] {
        let noise = gaussian_noise(7, DIMS.iter().product());
        let mut whole = FlowSampler::new(kind, 6, 3.0).unwrap();
        let expected = run(&mut whole, noise.clone(), 0, 6);

        for stop in [0, 1, 2, 5, 6] {
            let mut first = FlowSampler::new(kind, 6, 3.0).unwrap();
            let latent = run(&mut first, noise.clone(), 0, stop);
            let path = dir.path().join(format!("{kind}-{stop}.ckpt"));
            let checkpoint = Checkpoint { job_id: "job".into(), step: stop, dims: DIMS, latent, sampler: first };
            write(&path, &checkpoint).unwrap();
            let mut back = read(&path, "job").unwrap();
            assert_eq!((back.step, back.dims), (stop, DIMS));
            assert_eq!(bits(&back.latent), bits(&checkpoint.latent));
            let resumed = run(&mut back.sampler, back.latent.clone(), stop, 6);
            assert_eq!(bits(&resumed), bits(&expected), "{kind} resumed after step {stop}");
        }
    }
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.ckpt");
    let mut sampler = FlowSampler::new(SamplerKind::UniPc, 4, 3.0).unwrap();
    let latent = run(&mut sampler, gaussian_noise(3, DIMS.iter().product()), 0, 2);
    write(&path, &Checkpoint { job_id: "job".into(), step: 2, dims: DIMS, latent, sampler }).unwrap();
    assert!(!dir.path().join("job.tmp").exists(), "the temporary file is renamed into place");
    let good = std::fs::read(&path).unwrap();

    let err = read(&path, "other").unwrap_err().to_string();
    assert!(err.contains("belongs to job job"), "{err}");

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    assert!(read(&path, "job").unwrap_err().to_string().contains("checksum"));

    for len in [0, 7, 20, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(matches!(read(&path, "job"), Err(CheckpointError::Corrupt { .. })), "truncated to {len}");
    }
    assert!(matches!(read(&dir.path().join("missing"), "job"), Err(CheckpointError::Io { .. })));
}
