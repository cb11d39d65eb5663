//! `fiberflow`: thin command-line front end over the fiberflow libraries.

mod cmd;
mod config_file;
mod gridsearch;
mod models;
mod output;
mod overrides;
mod progress;
mod remote;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Predict 3D resin flow in fibre composites: make microstructures, solve Stokes flow,
/// build datasets.
#[derive(Parser)]
#[command(name = "fiberflow", version, about)]
struct Cli {
    /// Worker threads of the solver and of every network backend, 1 to 1024 (default: all
    /// cores). Bounded because each thread is started up front, and 100 000 of them hung
    /// the command before it did any work.
    #[arg(long, global = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    threads: Option<usize>,
    /// Memory budget in GiB that every allocation sized by the arguments or the inputs is
    /// checked against before it is made (default: $FIBERFLOW_MAX_MEMORY_GIB, else 16).
    #[arg(long, global = true)]
    max_memory_gib: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Draw a random fibre microstructure and write its masks.
    Geometry(cmd::geometry::GeometryArgs),
    /// Solve 2D and/or 3D Stokes flow through a microstructure.
    Solve(cmd::solve::SolveArgs),
    /// Generate a dataset: microstructures with their 2D and 3D flows.
    Generate(cmd::generate::GenerateArgs),
    /// Inspect, import, export, merge and split datasets.
    Dataset(cmd::dataset::DatasetArgs),
    /// Train the networks.
    Train(cmd::train::TrainArgs),
    /// Train every combination of a grid of diffusion config values and rank them.
    Gridsearch(cmd::gridsearch::GridsearchArgs),
    /// Score a trained model (or the VAE alone, or the copy-2D baseline) on a dataset split.
    Evaluate(cmd::evaluate::EvaluateArgs),
    /// The whole pipeline on its defaults: generate, train, evaluate, predict, report.
    Quickstart(cmd::quickstart::QuickstartArgs),
    /// Draw the loss, error and physics curves of a training run as PNG.
    Plot(cmd::plot::PlotArgs),
    /// Predict the 3D flow of one microstructure (dataset sample or image stack), with
    /// uncertainty, as .npy, ParaView .vti, PNG and JSON.
    Predict(Box<cmd::predict::PredictArgs>),
    /// Model bundles: export a trained run as one file, print a bundle's card.
    Model(cmd::model::ModelArgs),
    /// Use a trained dual VAE: cache its latents, or draw what it reconstructs.
    Vae(cmd::vae::VaeArgs),
    /// Measure what the solver and the networks cost (throughput, training steps, prediction).
    Bench(cmd::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
        fiberflow_model::device::set_threads(n);
    }
    use fiberflow_geometry::budget;
    let budget = match cli.max_memory_gib {
        Some(gib) => budget::set_gib(gib),
        None => budget::set_from_env(),
    };
    if let Err(e) = budget {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Geometry(a) => cmd::geometry::run(a),
        Command::Plot(a) => cmd::plot::run(a),
        Command::Solve(a) => cmd::solve::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Dataset(a) => cmd::dataset::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Gridsearch(a) => cmd::gridsearch::run(a),
        Command::Vae(a) => cmd::vae::run(a),
        Command::Model(a) => cmd::model::run(a),
        Command::Evaluate(a) => cmd::evaluate::run(a),
        Command::Predict(a) => cmd::predict::run(*a),
        Command::Quickstart(a) => cmd::quickstart::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
