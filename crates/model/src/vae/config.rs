//! VAE configuration, validated before any layer is built.

use super::{Decoder, Encoder, VaeBranch};
use crate::error::ModelError;
use burn::prelude::*;

/// Architecture of one VAE branch. Defaults are sized so a CPU trains it in minutes; the
/// reference project's widths are [`VaeConfig::reference`].
#[derive(Config, Debug, PartialEq)]
pub struct VaeConfig {
    /// Input and output channels (vx, vy, vz).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Microstructure feature channels given to both encoder and decoder (mask and
    /// distance to fibres, `fiberflow_data::features`); 0 for the reference's
    /// unconditioned VAE. The geometry is known whenever a flow is predicted, and a decoder
    /// that sees it spends its latent on the flow only.
    #[config(default = 2)]
    pub geometry_channels: usize,
    /// Latent channels Cz.
    #[config(default = 8)]
    pub latent_channels: usize,
    /// Channels per resolution level; each level after the first halves H and W, so the
    /// latent is downsampled by f = patch · 2^(levels − 1).
    #[config(default = "vec![8, 16, 32]")]
    pub channels: Vec<usize>,
    /// Patch embedding: the encoder folds each `patch`×`patch` block of H and W (field and
    /// microstructure) into channels before its first convolution, and the decoder unfolds
    /// its last convolution's output the same way, so no convolution runs at full
    /// resolution (see [`crate::ops::space_to_depth`]); the geometry reaches each decoder
    /// level folded the same way, so the finest level still sees every pixel of it. Read
    /// through [`VaeConfig::patch`]: absent (`None`, as in runs written before the field
    /// existed, since Burn's config derive gives missing fields no default) means 1, a
    /// full-resolution first level.
    #[config(default = "None")]
    pub patch: Option<usize>,
    /// Residual blocks per level.
    #[config(default = 1)]
    pub blocks_per_level: usize,
    /// GroupNorm groups; every channel count must be divisible by it.
    #[config(default = 4)]
    pub groups: usize,
    /// log σ² is clamped to ±this, so exp(log σ²) cannot overflow.
    #[config(default = 10.0)]
    pub logvar_clamp: f64,
    /// Initial log σ² of the posterior (the bias of the encoder's log-variance channels).
    /// With 0, the decoder first sees latents drowned in unit noise and learns to ignore
    /// them; starting at σ ≈ 0.05 lets reconstruction train from the first step while the
    /// KL term still widens σ where the data allows.
    #[config(default = -6.0)]
    pub logvar_init: f64,
}

impl VaeConfig {
    /// The reference project's architecture: widths 128/256/512, two blocks per level,
    /// 32 groups, Cz = 8, f = 4 (35 M encoder and 42 M decoder parameters).
    pub fn reference() -> Self {
        Self::new()
            .with_channels(vec![128, 256, 512])
            .with_blocks_per_level(2)
            .with_groups(32)
            .with_geometry_channels(0)
    }

    /// The patch size (1 when unset).
    pub fn patch(&self) -> usize {
        self.patch.unwrap_or(1)
    }

    /// Downsampling factor f of H and W: the patch times 2 per level after the first.
    pub fn downsample_factor(&self) -> usize {
        self.patch() << self.channels.len().saturating_sub(1)
    }

    /// Shape of the latent of an input `[B, C, S, H, W]`: `[B, Cz, S, H/f, W/f]`.
    pub fn latent_shape(&self, [b, _, s, h, w]: [usize; 5]) -> [usize; 5] {
        let f = self.downsample_factor();
        [b, self.latent_channels, s, h / f, w / f]
    }

    /// Checks every dimension rule, naming the field that breaks it.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        // The data decide it; any other count surfaced as a convolution's shape panic once
        // training had started.
        if self.in_channels != 3 {
            return bad(format!(
                "in_channels = {} must be 3: the VAE encodes the flow's vx, vy and vz",
                self.in_channels
            ));
        }
        if self.latent_channels == 0 {
            return bad("latent_channels must be ≥ 1".into());
        }
        if self.channels.is_empty() || self.channels.contains(&0) {
            return bad(format!(
                "channels = {:?} must be non-empty and positive",
                self.channels
            ));
        }
        if self.groups == 0 {
            return bad("groups must be ≥ 1".into());
        }
        if let Some(c) = self.channels.iter().find(|&&c| c % self.groups != 0) {
            return bad(format!(
                "channel count {c} in channels = {:?} is not divisible by groups = {}",
                self.channels, self.groups
            ));
        }
        if self.blocks_per_level == 0 {
            return bad("blocks_per_level must be ≥ 1".into());
        }
        if !(1..=8).contains(&self.patch()) {
            return bad(format!("patch = {} must lie in 1..=8", self.patch()));
        }
        let features = fiberflow_data::features::GEOMETRY_CHANNELS;
        if ![0, features].contains(&self.geometry_channels) {
            return bad(format!(
                "geometry_channels = {} must be 0 (no microstructure input) or {features} (mask and distance to fibres)",
                self.geometry_channels
            ));
        }
        if !(self.logvar_clamp.is_finite() && self.logvar_clamp > 0.0) {
            return bad("logvar_clamp must be a positive number".into());
        }
        if self.logvar_init.is_nan() || self.logvar_init.abs() > self.logvar_clamp {
            return bad(format!(
                "logvar_init = {} must lie within ±logvar_clamp = {}",
                self.logvar_init, self.logvar_clamp
            ));
        }
        Ok(())
    }

    /// Checks that an input of `(slices, height, width)` fits: H and W divisible by f.
    pub fn check_input(&self, height: usize, width: usize) -> Result<(), ModelError> {
        let f = self.downsample_factor();
        if !height.is_multiple_of(f) || !width.is_multiple_of(f) {
            return Err(ModelError::Input(format!(
                "H × W = {height} × {width} is not divisible by the downsampling factor {f} of patch = {} and channels = {:?}",
                self.patch(),
                self.channels
            )));
        }
        Ok(())
    }

    /// Builds one encoder/decoder pair on `device` after validating the configuration.
    pub fn init(&self, device: &Device) -> Result<VaeBranch, ModelError> {
        self.validate()?;
        Ok(VaeBranch {
            encoder: Encoder::new(self, device),
            decoder: Decoder::new(self, device),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_named() {
        let e = VaeConfig::new()
            .with_channels(vec![16, 30])
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("30") && e.to_string().contains("groups"),
            "{e}"
        );
        assert!(VaeConfig::new().with_channels(vec![]).validate().is_err());
        assert!(VaeConfig::new().with_latent_channels(0).validate().is_err());
        assert!(VaeConfig::new().with_groups(0).validate().is_err());
        assert!(
            VaeConfig::new()
                .with_geometry_channels(3)
                .validate()
                .is_err()
        );
        let e = VaeConfig::new().check_input(64, 30).unwrap_err();
        assert!(
            e.to_string()
                .contains("divisible by the downsampling factor 4"),
            "{e}"
        );
        assert!(VaeConfig::new().check_input(64, 32).is_ok());
        assert!(VaeConfig::new().with_patch(Some(0)).validate().is_err());
        let patched = VaeConfig::new()
            .with_patch(Some(2))
            .with_channels(vec![16, 32]);
        assert_eq!(patched.downsample_factor(), 4);
        assert_eq!(patched.latent_shape([1, 3, 11, 64, 64]), [1, 8, 11, 16, 16]);
    }

    #[test]
    fn a_config_written_before_the_patch_field_reads_as_patch_1() {
        let mut old =
            serde_json::to_value(VaeConfig::new().with_channels(vec![8, 16, 32])).unwrap();
        old.as_object_mut().unwrap().remove("patch");
        let cfg: VaeConfig = serde_json::from_value(old).unwrap();
        assert_eq!((cfg.patch(), cfg.downsample_factor()), (1, 4));
        let new = VaeConfig::new().with_patch(Some(4)).with_channels(vec![32]);
        let back: VaeConfig = serde_json::from_value(serde_json::to_value(&new).unwrap()).unwrap();
        assert_eq!((back.patch(), back.downsample_factor()), (4, 4));
    }

    #[test]
    fn reference_preset_has_the_reference_parameter_counts() {
        // The reference PyTorch project's VAE has 35,354,768 parameters per encoder and
        // 41,715,459 per decoder.
        let cfg = VaeConfig::reference();
        let branch = cfg.init(&Device::flex()).unwrap();
        assert_eq!(branch.encoder.num_params(), 35_354_768);
        assert_eq!(branch.decoder.num_params(), 41_715_459);
    }
}
