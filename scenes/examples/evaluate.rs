//! Evaluates an MP4 against a prompt and prints the report as JSON.
//!
//! `cargo run -p patchwork-scenes --example evaluate -- VIDEO.mp4 "a red circle moving left" [SEAM...]`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, prompt, seams @ ..] = args.as_slice() else {
        eprintln!("usage: evaluate VIDEO.mp4 PROMPT [SEAM_FRAME...]");
        return ExitCode::FAILURE;
    };
    let seams: Result<Vec<usize>, _> = seams.iter().map(|s| s.parse::<usize>()).collect();
    let Ok(seams) = seams else {
        eprintln!("seams must be frame indices");
        return ExitCode::FAILURE;
    };
    let video = match patchwork_scenes::mp4::read_video(path) {
        Ok(video) => video,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let report = patchwork_scenes::eval::evaluate(&video, prompt, (!seams.is_empty()).then_some(&seams[..]));
    match serde_json::to_string_pretty(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("cannot serialise the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
