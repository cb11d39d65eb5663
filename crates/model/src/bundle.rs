//! Model bundles: a trained predictor, the dual VAE it works in (with their configs,
//! normalisation and latent scales, which live in the runs' logs), a few test samples and
//! a card saying how the model was made and how well it did, in one uncompressed tar file.
//! A run folder names its VAE by path, so it cannot be handed on; a bundle can, and one is
//! built into fiberflow (`builtin`) so a user can predict without training. Tar, because
//! `tar -tf` lists it and every platform can unpack it.
//!
//! Reading is strict: the card comes first, every member must be listed in it with its size
//! and SHA-256, and a missing, extra or altered member is an error naming the bundle.

use crate::error::ModelError;
use crate::latent::DualVae;
use crate::predict::sampling::{PredictorKind, SampleOptions};
use crate::predict::{EstimateRequest, PointEstimate, RefinerPart, Steering, TrainedModel};
use crate::run::checkpoint::{BEST_FILE, LOG_FILE};
use crate::run::diffusion::DiffusionRunLog;
use crate::run::vae::RunLog;
use burn::prelude::*;
use fiberflow_data::atomic::write_atomic;
use fiberflow_data::json::read_json;
use fiberflow_data::sample::SampleFile;
use fiberflow_data::{Dataset, Sample};
use fiberflow_eval::Comparison;
use fiberflow_eval::corrected::relative_l2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Version of the layout below; a bundle of another version is refused by name. Format 2
/// adds the refiner (`refiner/`); a bundle without one is still written as format 1, which
/// older fiberflow versions read.
pub const FORMAT: u32 = 2;
/// The oldest format this version reads.
const OLDEST_FORMAT: u32 = 1;
/// The bundle's first member.
const CARD: &str = "card.json";
/// Folders of the three runs inside a bundle.
const PREDICTOR: &str = "predictor";
const STAGE2: &str = "vae-stage2";
const STAGE1: &str = "vae-stage1";
const REFINER: &str = "refiner";
const CHECK: &str = "check";
/// Largest card read before it is parsed; cards are a few kB.
const MAX_CARD_BYTES: u64 = 1 << 20;
/// Largest bundle member: far above any network fiberflow trains, far below a memory risk.
const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// The built-in model's bundle (an empty file in a build without one).
static BUILTIN: &[u8] = include_bytes!("../assets/default.ffmodel");

/// What a bundle says about itself (`card.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Card {
    pub format: u32,
    /// The fiberflow version that wrote the bundle.
    pub fiberflow_version: String,
    pub predictor: PredictorKind,
    pub data: DataCard,
    /// The VAE's stages 1 and 2 and the predictor, in training order.
    pub training: Vec<RunCard>,
    /// The commands that trained and scored the model, as given to `model export`.
    pub commands: Vec<String>,
    /// Scores of the model and of the baselines, as given to `model export`.
    pub evaluations: Vec<Evaluation>,
    /// Test samples shipped in the bundle with the model's error on each when exported,
    /// so any build can check that it reproduces the model (`model info --check`).
    pub check: Vec<CheckSample>,
    /// Every other member: path, size and SHA-256.
    pub members: Vec<Member>,
}

/// The training data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataCard {
    /// SHA-256 of the dataset's manifest, as the runs recorded it.
    pub manifest_sha256: String,
    /// The generator's header: packing and solver configuration, grid and seed.
    pub generator: serde_json::Value,
    /// The fiberflow commit that generated the data, where known.
    pub commit: Option<String>,
    /// Voxel size (dx, dy, dz = slice pitch, m).
    pub dxyz: Option<[f64; 3]>,
    pub samples: usize,
    pub train_samples: usize,
    pub test_samples: usize,
}

/// One training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunCard {
    pub role: String,
    pub epochs: usize,
    pub best_epoch: Option<usize>,
    /// Wall time of all epochs.
    pub seconds: f64,
    pub parameters: usize,
    pub config: serde_json::Value,
}

/// One scored predictor or baseline on a split of the training data's dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// What was scored: `diffusion`, `direct`, `vae`, `copy2d`, `solve3d`, ….
    pub label: String,
    pub split: String,
    pub samples: usize,
    /// Mean relative L2 error over the fluid of vx, vy, vz.
    pub relative_l2: [f64; 3],
    pub seconds_per_sample: f64,
}

/// A test sample shipped in the bundle and the ensemble-mean error on it when exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckSample {
    pub file: String,
    pub dataset_index: usize,
    pub draws: usize,
    pub seed: u64,
    pub relative_l2: [f64; 3],
}

/// A member of the bundle other than the card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What `model export` adds to what the runs record.
#[derive(Debug, Default, Clone)]
pub struct ExportInfo {
    pub commands: Vec<String>,
    pub evaluations: Vec<Evaluation>,
    pub data_commit: Option<String>,
    /// The dataset the runs were trained on, where it moved since (default: as recorded).
    pub dataset: Option<PathBuf>,
    /// Test samples to ship for `model info --check`.
    pub check_samples: usize,
    /// Draws per check sample (diffusion; a direct predictor makes one).
    pub check_draws: usize,
}

/// A bundle unpacked into a private temporary folder, its members verified.
pub struct Bundle {
    pub card: Card,
    /// Where the bundle came from, for messages.
    pub origin: String,
    dir: tempfile::TempDir,
}

impl Bundle {
    /// Reads and verifies a bundle file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::checkpoint(path, e))?;
        Self::read(file, &path.display().to_string())
    }

    /// The bundle built into this fiberflow, if the build has one.
    pub fn builtin() -> Result<Option<Self>, ModelError> {
        if BUILTIN.is_empty() {
            return Ok(None);
        }
        Self::read(BUILTIN, "the built-in model").map(Some)
    }

    /// Reads a bundle from `reader`, unpacking its members after checking each against the
    /// card.
    pub fn read(reader: impl Read, origin: &str) -> Result<Self, ModelError> {
        let bad = |what: String| {
            ModelError::checkpoint(
                Path::new(origin),
                format!("not a readable fiberflow model bundle: {what}"),
            )
        };
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive
            .entries()
            .map_err(|e| bad(format!("{e} (truncated?)")))?;
        let mut next = |expected: &str| -> Result<tar::Entry<'_, _>, ModelError> {
            match entries.next() {
                Some(entry) => entry.map_err(|e| bad(format!("{e} (truncated?)"))),
                None => Err(bad(format!("it ends before {expected} (truncated?)"))),
            }
        };
        let card_entry = next(CARD)?;
        let card: Card = {
            let name = entry_path(&card_entry).map_err(&bad)?;
            if name != CARD {
                return Err(bad(format!("its first member is {name}, not {CARD}")));
            }
            if card_entry.size() > MAX_CARD_BYTES {
                return Err(bad(format!("its card exceeds {MAX_CARD_BYTES} bytes")));
            }
            let bytes = read_member(card_entry, MAX_CARD_BYTES).map_err(&bad)?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("its card is not JSON ({e})")))?;
            let format = value.get("format").and_then(|f| f.as_u64());
            if !format.is_some_and(|f| (u64::from(OLDEST_FORMAT)..=u64::from(FORMAT)).contains(&f))
            {
                return Err(ModelError::Config(format!(
                    "{origin} is a model bundle of format {}, written by fiberflow {}; this \
                     fiberflow {} reads formats {OLDEST_FORMAT} to {FORMAT}: use the matching \
                     version, or export the run again",
                    format.map_or("?".into(), |f| f.to_string()),
                    value
                        .get("fiberflow_version")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?"),
                    env!("CARGO_PKG_VERSION")
                )));
            }
            let card: Card =
                serde_json::from_value(value).map_err(|e| bad(format!("its card: {e}")))?;
            card.check_contents().map_err(&bad)?;
            card
        };
        let dir = tempfile::Builder::new()
            .prefix("fiberflow-bundle-")
            .tempdir()
            .map_err(|e| ModelError::Input(format!("a temporary folder for {origin}: {e}")))?;
        for member in &card.members {
            let entry = next(&member.path)?;
            let name = entry_path(&entry).map_err(&bad)?;
            if name != member.path || entry.size() != member.bytes {
                return Err(bad(format!(
                    "member {name} ({} bytes) where the card lists {} ({} bytes)",
                    entry.size(),
                    member.path,
                    member.bytes
                )));
            }
            let bytes = read_member(entry, MAX_MEMBER_BYTES).map_err(&bad)?;
            if bytes.len() as u64 != member.bytes {
                return Err(bad(format!("it ends inside {name} (truncated)")));
            }
            if format!("{:x}", Sha256::digest(&bytes)) != member.sha256 {
                return Err(bad(format!(
                    "{} differs from its card's SHA-256",
                    member.path
                )));
            }
            let target = dir.path().join(safe_relative(&member.path).map_err(&bad)?);
            let written = target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&target, &bytes));
            written.map_err(|e| ModelError::checkpoint(&target, e))?;
        }
        if let Some(extra) = entries.next() {
            let name = extra
                .map_err(|e| e.to_string())
                .and_then(|e| entry_path(&e))
                .unwrap_or_else(|e| e);
            return Err(bad(format!("member {name} is not listed in its card")));
        }
        Ok(Self {
            card,
            origin: origin.to_string(),
            dir,
        })
    }

    /// The model, with the VAE from the bundle (not from the path its log recorded).
    pub fn load(&self, device: &Device) -> Result<TrainedModel, ModelError> {
        let root = self.dir.path();
        let (predictor, stage2) = (root.join(PREDICTOR), root.join(STAGE2));
        let load = || -> Result<TrainedModel, ModelError> {
            let log = TrainedModel::run_log(&predictor)?;
            let log2 = DualVae::stage2_log(&stage2)?;
            let vae = DualVae::load_pair(&stage2, log2, root.join(STAGE1), device)?;
            let model = TrainedModel::assemble(&predictor, log, vae, device)?;
            let refiner = root.join(REFINER);
            match RefinerPart::run_log(&refiner)? {
                Some(log) => model.with_refiner(&refiner, log, device),
                None => Ok(model),
            }
        };
        load().map_err(|e| ModelError::Config(format!("{}: {e}", self.origin)))
    }

    /// Predicts every check sample as at export and returns the errors measured now, in
    /// the card's order.
    pub fn check(
        &self,
        model: &TrainedModel,
        device: &Device,
    ) -> Result<Vec<[f64; 3]>, ModelError> {
        self.card
            .check
            .iter()
            .map(|c| {
                let path = self.dir.path().join(safe_relative(&c.file).map_err(|e| {
                    ModelError::Input(format!("{}: check sample {e}", self.origin))
                })?);
                let sample = SampleFile::open(&path)?.load()?;
                check_error(model, sample, c.draws, c.seed, device)
            })
            .collect()
    }
}

/// The model at `path` (a run folder or a bundle), or the built-in one when `path` is
/// `None`, with the built-in bundle's card when it was used.
pub fn load_model(
    path: Option<&Path>,
    device: &Device,
) -> Result<(TrainedModel, Option<Card>), ModelError> {
    match path {
        Some(path) => Ok((TrainedModel::load(path, device)?, None)),
        None => {
            let bundle = Bundle::builtin()?.ok_or_else(|| {
                ModelError::Input(
                    "this build of fiberflow has no built-in model: pass --model with a run \
                     folder or a bundle (`fiberflow quickstart` trains one)"
                        .into(),
                )
            })?;
            Ok((bundle.load(device)?, Some(bundle.card)))
        }
    }
}

impl Card {
    /// What a card must hold for its bundle to load: the three runs' files, at least one
    /// draw per check sample, and a hexadecimal manifest hash.
    fn check_contents(&self) -> Result<(), String> {
        for folder in [PREDICTOR, STAGE2, STAGE1] {
            for file in [LOG_FILE, BEST_FILE] {
                let path = format!("{folder}/{file}");
                if !self.members.iter().any(|m| m.path == path) {
                    return Err(format!("its card lists no {path}"));
                }
            }
        }
        if let Some(c) = self.check.iter().find(|c| c.draws == 0) {
            return Err(format!("check sample {} has 0 draws", c.file));
        }
        if !self
            .data
            .manifest_sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
        {
            return Err("its card's manifest hash is not hexadecimal".into());
        }
        Ok(())
    }

    /// One line naming the model: predictor, training data and its test error beside the
    /// 3D solve of the slices.
    pub fn summary(&self) -> String {
        let grid = &self.data.generator["grid"];
        let mut line = format!(
            "{:?} predictor trained on {} samples of {}×{}×{} (fiberflow {})",
            self.predictor,
            self.data.train_samples,
            grid["slices"],
            grid["size"],
            grid["size"],
            self.fiberflow_version
        )
        .to_lowercase();
        let find = |label: &str| self.evaluations.iter().find(|e| e.label == label);
        if let (Some(m), Some(b)) = (find("model"), find("solve3d")) {
            let [x, y, z] = m.relative_l2;
            let [bx, by, bz] = b.relative_l2;
            line += &format!(
                "; test error vx {x:.3} vy {y:.3} vz {z:.3} against the 3D solve's {bx:.3} {by:.3} {bz:.3}"
            );
        }
        line
    }
}

/// Writes a bundle of the diffusion or direct run `run` to `out` (atomically) and returns
/// its card.
pub fn export(
    run: &Path,
    out: &Path,
    info: &ExportInfo,
    device: &Device,
) -> Result<Card, ModelError> {
    if run.is_file() {
        return Err(ModelError::Input(format!(
            "{} is a file (a bundle already?); `model export` takes a run folder",
            run.display()
        )));
    }
    let model = TrainedModel::load(run, device)?;
    // A refiner run is exported with the model it refines, which must be a run folder.
    let predictor_dir = match &model.refiner {
        Some(part) if part.log.base.is_file() => {
            return Err(ModelError::Input(format!(
                "{} refines the bundle {}; `model export` needs the run folders: train the refiner on the diffusion or direct run itself",
                run.display(),
                part.log.base.display()
            )));
        }
        Some(part) => part.log.base.clone(),
        None => run.to_path_buf(),
    };
    let stage2 = model.vae.stage2_dir.clone();
    let stage1 = model.vae.stage1_dir.clone();
    let log2: RunLog = read_json(&stage2.join(LOG_FILE), "the VAE run has moved")?;
    let log1: RunLog = read_json(&stage1.join(LOG_FILE), "the stage-1 run has moved")?;
    let dataset_dir = info.dataset.clone().unwrap_or(model.log.dataset.clone());
    let dataset = Dataset::open(&dataset_dir).map_err(|e| {
        ModelError::Input(format!(
            "the training data {} is needed for the card and the check samples ({e}); pass \
             --dataset where it moved",
            dataset_dir.display()
        ))
    })?;
    if dataset.manifest.sha256(&dataset_dir)? != model.log.dataset_manifest_sha256 {
        return Err(ModelError::Config(format!(
            "{} is not the dataset {} was trained on (its manifest differs)",
            dataset_dir.display(),
            run.display()
        )));
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut folders = vec![
        (PREDICTOR, predictor_dir.as_path()),
        (STAGE2, &stage2),
        (STAGE1, &stage1),
    ];
    if let Some(part) = &model.refiner {
        folders.push((REFINER, &part.dir));
    }
    for (folder, dir) in folders {
        for name in [LOG_FILE, BEST_FILE] {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| ModelError::checkpoint(&path, e))?;
            files.push((format!("{folder}/{name}"), bytes));
        }
    }
    let draws = match model.log.config.predictor {
        PredictorKind::Diffusion => info.check_draws.max(1),
        PredictorKind::Direct => 1,
    };
    let mut check = Vec::new();
    for &index in dataset.splits.test.iter().take(info.check_samples) {
        let file = dataset.open_sample(index)?;
        let name = format!("{CHECK}/{index:06}.safetensors");
        let bytes =
            std::fs::read(file.path()).map_err(|e| ModelError::checkpoint(file.path(), e))?;
        let relative_l2 = check_error(&model, file.load()?, draws, 0, device)?;
        files.push((name.clone(), bytes));
        check.push(CheckSample {
            file: name,
            dataset_index: index,
            draws,
            seed: 0,
            relative_l2,
        });
    }
    let header = &dataset.manifest.header;
    let mut training = vec![
        run_card(
            "vae stage 1",
            &log1.history,
            log1.best_epoch,
            log1.parameters,
            &log1.config,
        )?,
        run_card(
            "vae stage 2",
            &log2.history,
            log2.best_epoch,
            log2.parameters,
            &log2.config,
        )?,
        predictor_card(&model.log)?,
    ];
    if let Some(part) = &model.refiner {
        let log = &part.log;
        training.push(run_card(
            "full-resolution refiner",
            &log.history,
            log.best_epoch,
            log.parameters,
            &log.config,
        )?);
    }
    let card = Card {
        format: if model.refiner.is_some() {
            FORMAT
        } else {
            OLDEST_FORMAT
        },
        fiberflow_version: env!("CARGO_PKG_VERSION").into(),
        predictor: model.log.config.predictor,
        data: DataCard {
            manifest_sha256: model.log.dataset_manifest_sha256.clone(),
            generator: header.generator.clone(),
            commit: info.data_commit.clone(),
            dxyz: model.log.dxyz,
            samples: dataset.len(),
            train_samples: dataset.splits.train.len(),
            test_samples: dataset.splits.test.len(),
        },
        training,
        commands: info.commands.clone(),
        evaluations: info.evaluations.clone(),
        check,
        members: files
            .iter()
            .map(|(path, bytes)| Member {
                path: path.clone(),
                bytes: bytes.len() as u64,
                sha256: format!("{:x}", Sha256::digest(bytes)),
            })
            .collect(),
    };
    write_atomic(out, &archive(&card, &files)?)?;
    Ok(card)
}

/// The tar file: the card, then the members in the card's order, with fixed metadata so
/// the same runs give the same bytes.
fn archive(card: &Card, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, ModelError> {
    let json =
        serde_json::to_vec_pretty(card).map_err(|e| ModelError::Input(format!("the card: {e}")))?;
    let mut builder = tar::Builder::new(Vec::new());
    let io = |e: std::io::Error| ModelError::Input(format!("writing the bundle: {e}"));
    for (path, bytes) in
        std::iter::once((CARD, &json[..])).chain(files.iter().map(|(p, b)| (p.as_str(), &b[..])))
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes).map_err(io)?;
    }
    builder.into_inner().map_err(io)
}

fn run_card<E: Serialize, C: Serialize>(
    role: &str,
    history: &[E],
    best_epoch: Option<usize>,
    parameters: usize,
    config: &C,
) -> Result<RunCard, ModelError> {
    let history = serde_json::to_value(history)
        .map_err(|e| ModelError::Input(format!("the {role} run's history: {e}")))?;
    let seconds = history.as_array().map_or(0.0, |h| {
        h.iter().filter_map(|e| e["seconds"].as_f64()).sum()
    });
    Ok(RunCard {
        role: role.into(),
        epochs: history.as_array().map_or(0, Vec::len),
        best_epoch,
        seconds,
        parameters,
        config: serde_json::to_value(config)
            .map_err(|e| ModelError::Input(format!("the {role} run's config: {e}")))?,
    })
}

fn predictor_card(log: &DiffusionRunLog) -> Result<RunCard, ModelError> {
    let role = match log.config.predictor {
        PredictorKind::Diffusion => "latent diffusion",
        PredictorKind::Direct => "direct latent predictor",
    };
    run_card(
        role,
        &log.history,
        log.best_epoch,
        log.parameters,
        &log.config,
    )
}

/// The relative L2 error per component on one sample of the mean of `draws` draws
/// (refined when the model has a refiner).
fn check_error(
    model: &TrainedModel,
    sample: Sample,
    draws: usize,
    seed: u64,
    device: &Device,
) -> Result<[f64; 3], ModelError> {
    let options = SampleOptions {
        sampler: model.log.config.val_sampler.clone(),
        guidance: 0.0,
    };
    let request = EstimateRequest {
        kind: PointEstimate::DrawMean,
        noises: draws,
        seed,
        symmetrize: false,
        refine: true,
    };
    let mean = model.sample_estimate(&sample, &options, &request, &Steering::default(), device)?;
    let comparison = Comparison::new(mean.view(), sample.u.view(), sample.domain.view())
        .map_err(|e| ModelError::Input(format!("check sample: {e}")))?;
    Ok(relative_l2(&comparison)
        .map_err(|e| ModelError::Input(format!("check sample: {e}")))?
        .components)
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, String> {
    let path = entry.path().map_err(|e| format!("a member's name: {e}"))?;
    Ok(path.to_string_lossy().into_owned())
}

/// Reads a member of at most `limit` bytes.
fn read_member(entry: impl Read, limit: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{e} (truncated?)"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("a member exceeds {limit} bytes"));
    }
    Ok(bytes)
}

/// A member path as a relative path with plain components only, so unpacking never
/// writes outside the bundle's folder.
fn safe_relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if p.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        Ok(p.to_path_buf())
    } else {
        Err(format!("member path {path} leaves the bundle"))
    }
}
