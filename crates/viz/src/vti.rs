//! VTK XML ImageData (`.vti`) files for ParaView.
//!
//! Format: the VTK XML file formats (VTK User's Guide, "VTK File Formats", serial
//! `ImageData`), version 1.0 with 64-bit block headers and base64 appended data: each
//! array is one base64 block encoding an 8-byte little-endian byte count followed by its
//! little-endian values, and its `offset` counts base64 characters after the `_` marker.
//! Base64 rather than raw appended bytes keeps the file valid text, so generic XML
//! parsers (and vtkio, which checks it in the tests) read it as well as ParaView.
//!
//! Geometry: origin 0, spacing `(dx, dy, dz)` **in metres** and one point per voxel of
//! the `(S, C, H, W)` layout: point `(x, y, z) = (j·dx, i·dy, s·dz)` for column `j`, row
//! `i`, slice `s`. Metres keep everything ParaView derives (Integrate Variables flow
//! rates, Gradient, stream-line times) in SI with the m/s velocities. Points are stored
//! x fastest, then y, then z, as VTK requires, so ParaView's default view (x right, y up)
//! shows array row 0 at the bottom.

use fiberflow_data::atomic::write_atomic;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fiberflow_geometry::layout::VoxelSize;
use ndarray::ArrayView4;

use crate::error::{Result, VizError};
use crate::field::{Grid, check_finite, check_mask, check_shape, check_voxel};

/// Name of the fluid mask array in every file (UInt8, 1 = fluid, 0 = fibre).
pub const MASK_ARRAY: &str = "mask";

/// A point-data array waiting to be written.
#[derive(Debug)]
struct PointArray<'a> {
    name: String,
    data: ArrayView4<'a, f32>,
}

/// One sample's volume as VTK ImageData: a fluid mask plus any number of named Float32
/// vector (3-component) and scalar fields on the same `(S, H, W)` grid.
///
/// Every array is checked as it is added (shape, finiteness, a unique non-empty name),
/// so [`VtiVolume::write`] only fails on I/O.
#[derive(Debug)]
pub struct VtiVolume<'a> {
    voxel: VoxelSize,
    grid: Grid,
    mask: ArrayView4<'a, f32>,
    vectors: Vec<PointArray<'a>>,
    scalars: Vec<PointArray<'a>>,
}

impl<'a> VtiVolume<'a> {
    /// A volume on the grid of `mask` (`(S, 1, H, W)`, only 0 and 1) with voxel size
    /// `voxel` (finite, positive, metres).
    pub fn new(voxel: VoxelSize, mask: ArrayView4<'a, f32>) -> Result<Self> {
        check_voxel(&voxel)?;
        let grid = check_shape(MASK_ARRAY, &mask, 1, None)?;
        check_mask(MASK_ARRAY, &mask)?;
        Ok(Self {
            voxel,
            grid,
            mask,
            vectors: Vec::new(),
            scalars: Vec::new(),
        })
    }

    /// Adds a vector field, `(S, 3, H, W)` with channels (vx, vy, vz), e.g. `U_pred` in m/s.
    pub fn with_vector(mut self, name: &str, field: ArrayView4<'a, f32>) -> Result<Self> {
        let array = self.checked(name, field, 3)?;
        self.vectors.push(array);
        Ok(self)
    }

    /// Adds a scalar field, `(S, 1, H, W)`, e.g. `|U|` in m/s.
    pub fn with_scalar(mut self, name: &str, field: ArrayView4<'a, f32>) -> Result<Self> {
        let array = self.checked(name, field, 1)?;
        self.scalars.push(array);
        Ok(self)
    }

    fn checked(
        &self,
        name: &str,
        data: ArrayView4<'a, f32>,
        channels: usize,
    ) -> Result<PointArray<'a>> {
        if name.is_empty() {
            return Err(VizError::invalid(name, "an array needs a name"));
        }
        let taken = name == MASK_ARRAY
            || self
                .vectors
                .iter()
                .chain(&self.scalars)
                .any(|a| a.name == name);
        if taken {
            return Err(VizError::invalid(
                name,
                "two arrays of one file share this name",
            ));
        }
        check_shape(name, &data, channels, Some(self.grid))?;
        check_finite(name, &data)?;
        Ok(PointArray {
            name: name.to_string(),
            data,
        })
    }

    /// Writes the `.vti` file atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(write_atomic(path, &self.to_bytes())?)
    }

    /// The complete file: XML header, then the appended base64 blocks.
    fn to_bytes(&self) -> Vec<u8> {
        let g = self.grid;
        let mut blocks: Vec<(&str, &str, usize, String)> = Vec::new();
        let mask = point_values(&self.mask, 1, g).map(|v| v as u8);
        blocks.push((MASK_ARRAY, "UInt8", 1, encode_block(mask.collect())));
        for (arrays, comps) in [(&self.vectors, 3), (&self.scalars, 1)] {
            for a in arrays {
                let bytes = point_values(&a.data, comps, g).flat_map(f32::to_le_bytes);
                blocks.push((&a.name, "Float32", comps, encode_block(bytes.collect())));
            }
        }

        let extent = format!("0 {} 0 {} 0 {}", g.cols - 1, g.rows - 1, g.slices - 1);
        let [dx, dy, dz] = self.voxel.as_array();
        let active_scalars = self.scalars.first().map_or(MASK_ARRAY, |a| &a.name);
        let active_vectors = self
            .vectors
            .first()
            .map(|v| format!(" Vectors=\"{}\"", escape(&v.name)))
            .unwrap_or_default();
        let mut xml = format!(
            "<?xml version=\"1.0\"?>\n\
             <VTKFile type=\"ImageData\" version=\"1.0\" byte_order=\"LittleEndian\" header_type=\"UInt64\">\n\
             \x20 <ImageData WholeExtent=\"{extent}\" Origin=\"0 0 0\" Spacing=\"{dx:e} {dy:e} {dz:e}\">\n\
             \x20   <Piece Extent=\"{extent}\">\n\
             \x20     <PointData Scalars=\"{}\"{active_vectors}>\n",
            escape(active_scalars)
        );
        let mut offset = 0usize;
        for (name, ty, comps, block) in &blocks {
            xml.push_str(&format!(
                "        <DataArray type=\"{ty}\" Name=\"{}\" NumberOfComponents=\"{comps}\" format=\"appended\" offset=\"{offset}\"/>\n",
                escape(name)
            ));
            offset += block.len();
        }
        xml.push_str(
            "      </PointData>\n      <CellData>\n      </CellData>\n    </Piece>\n  </ImageData>\n  <AppendedData encoding=\"base64\">\n   _",
        );

        xml.reserve(offset + 32);
        for (_, _, _, block) in &blocks {
            xml.push_str(block);
        }
        xml.push_str("\n  </AppendedData>\n</VTKFile>\n");
        xml.into_bytes()
    }
}

/// The values of `a` in VTK point order: x (column) fastest, then y (row), then z
/// (slice), with the `comps` channels of one point together.
fn point_values<'b>(
    a: &'b ArrayView4<f32>,
    comps: usize,
    g: Grid,
) -> impl Iterator<Item = f32> + 'b {
    (0..g.slices).flat_map(move |s| {
        (0..g.rows).flat_map(move |i| {
            (0..g.cols).flat_map(move |j| (0..comps).map(move |c| a[[s, c, i, j]]))
        })
    })
}

/// One appended block: the byte count as a little-endian u64, then the bytes, base64
/// encoded together as VTK does for uncompressed data.
fn encode_block(bytes: Vec<u8>) -> String {
    let mut raw = (bytes.len() as u64).to_le_bytes().to_vec();
    raw.extend(bytes);
    BASE64.encode(raw)
}

/// `s` with the five XML special characters escaped, for attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;
    use vtkio::model::{Attribute, DataSet, ElementType, Extent, IOBuffer, Piece};

    const S: usize = 2;
    const H: usize = 3;
    const W: usize = 4;

    fn voxel() -> VoxelSize {
        VoxelSize::from_um(0.78, 5.0)
    }

    /// Mask with one fibre voxel at (s, i, j) = (1, 2, 3).
    fn mask() -> Array4<f32> {
        let mut m = Array4::ones((S, 1, H, W));
        m[[1, 0, 2, 3]] = 0.0;
        m
    }

    /// Every entry tells where it sits: 1000·c + 100·s + 10·i + j.
    fn labelled(channels: usize) -> Array4<f32> {
        Array4::from_shape_fn((S, channels, H, W), |(s, c, i, j)| {
            (1000 * c + 100 * s + 10 * i + j) as f32
        })
    }

    /// What vtkio finds in a file.
    struct ReadBack {
        extent: Extent,
        origin: [f32; 3],
        spacing: [f32; 3],
        arrays: Vec<(String, ElementType, IOBuffer)>,
    }

    fn read_back(path: &Path) -> ReadBack {
        let vtk = vtkio::Vtk::import(path).unwrap();
        let DataSet::ImageData {
            extent,
            origin,
            spacing,
            pieces,
            ..
        } = vtk.data
        else {
            panic!("not ImageData")
        };
        let Piece::Inline(piece) = &pieces[0] else {
            panic!("piece not inline")
        };
        let arrays = piece
            .data
            .point
            .iter()
            .map(|a| match a {
                Attribute::DataArray(d) => (d.name.clone(), d.elem.clone(), d.data.clone()),
                Attribute::Field { .. } => panic!("unexpected field data"),
            })
            .collect();
        ReadBack {
            extent,
            origin,
            spacing,
            arrays,
        }
    }

    #[test]
    fn vtkio_reads_back_dims_spacing_names_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.vti");
        let (m, u, speed) = (mask(), labelled(3), labelled(1));
        VtiVolume::new(voxel(), m.view())
            .unwrap()
            .with_vector("U_pred", u.view())
            .unwrap()
            .with_scalar("|U|", speed.view())
            .unwrap()
            .write(&path)
            .unwrap();

        let ReadBack {
            extent,
            origin,
            spacing,
            arrays,
        } = read_back(&path);
        assert_eq!(extent, Extent::Ranges([0..=3, 0..=2, 0..=1]));
        assert_eq!(origin, [0.0; 3]);
        for (got, want) in spacing.iter().zip([0.78e-6, 0.78e-6, 5e-6]) {
            assert!((f64::from(*got) / want - 1.0).abs() < 1e-6, "{spacing:?}");
        }
        let names: Vec<&str> = arrays.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(names, ["mask", "U_pred", "|U|"]);

        let IOBuffer::U8(mask_values) = &arrays[0].2 else {
            panic!("mask is not UInt8: {:?}", arrays[0].2)
        };
        assert_eq!(mask_values.len(), S * H * W);
        // Point (x, y, z) = (3, 2, 1) is the last one, the only fibre voxel.
        assert_eq!(mask_values.iter().filter(|&&v| v == 0).count(), 1);
        assert_eq!(mask_values[S * H * W - 1], 0);

        assert_eq!(arrays[1].1.num_comp(), 3);
        let IOBuffer::F32(u_values) = &arrays[1].2 else {
            panic!("U_pred is not Float32")
        };
        assert_eq!(u_values.len(), 3 * S * H * W);
        let IOBuffer::F32(speed_values) = &arrays[2].2 else {
            panic!("|U| is not Float32")
        };
        // VTK point order: x fastest, then y, then z; components of one point together.
        for s in 0..S {
            for i in 0..H {
                for j in 0..W {
                    let point = j + W * (i + H * s);
                    for c in 0..3 {
                        assert_eq!(
                            u_values[3 * point + c],
                            u[[s, c, i, j]],
                            "({s},{c},{i},{j})"
                        );
                    }
                    assert_eq!(speed_values[point], speed[[s, 0, i, j]]);
                }
            }
        }
    }

    #[test]
    fn header_names_active_arrays_and_block_sizes_match() {
        let (m, u) = (mask(), labelled(3));
        let bytes = VtiVolume::new(voxel(), m.view())
            .unwrap()
            .with_vector("U_true", u.view())
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("Scalars=\"mask\" Vectors=\"U_true\""),
            "{text}"
        );
        // Two blocks: 8 + 24 mask bytes (44 base64 characters), then 8 + 24·3·4 vector
        // bytes (396 characters); the second offset points just past the first.
        assert!(
            text.contains("offset=\"0\"") && text.contains("offset=\"44\""),
            "{text}"
        );
        let start = text.find("\n   _").unwrap() + 5;
        let tail = "\n  </AppendedData>\n</VTKFile>\n".len();
        assert_eq!(bytes.len() - start - tail, 44 + 396);
        let first = BASE64.decode(&bytes[start..start + 44]).unwrap();
        assert_eq!(first[..8], 24u64.to_le_bytes());
    }

    #[test]
    fn bad_arrays_are_refused_with_their_name() {
        let (m, u) = (mask(), labelled(3));
        let volume = || VtiVolume::new(voxel(), m.view()).unwrap();
        let transposed = Array4::<f32>::zeros((S, 3, W, H));
        let err = volume().with_vector("U", transposed.view()).unwrap_err();
        assert!(matches!(err, VizError::Shape { .. }), "{err}");
        let err = volume().with_scalar("U", u.view()).unwrap_err();
        assert!(matches!(err, VizError::Shape { .. }), "{err}");

        let mut bad = labelled(3);
        bad[[0, 1, 2, 3]] = f32::NAN;
        let err = volume().with_vector("U_pred", bad.view()).unwrap_err();
        assert!(matches!(err, VizError::NonFinite { .. }), "{err}");
        assert!(err.to_string().contains("U_pred"));

        let twice = volume()
            .with_vector("U", u.view())
            .unwrap()
            .with_vector("U", u.view());
        assert!(twice.is_err());
        assert!(volume().with_vector("mask", u.view()).is_err());
        assert!(volume().with_vector("", u.view()).is_err());
    }

    #[test]
    fn bad_voxel_or_mask_is_refused() {
        let m = mask();
        let mut flat = voxel();
        flat.dz_m = 0.0;
        assert!(VtiVolume::new(flat, m.view()).is_err());
        let mut fuzzy = mask();
        fuzzy[[0, 0, 0, 0]] = 0.5;
        assert!(VtiVolume::new(voxel(), fuzzy.view()).is_err());
    }

    #[test]
    fn names_are_xml_escaped() {
        let (m, u) = (mask(), labelled(3));
        let bytes = VtiVolume::new(voxel(), m.view())
            .unwrap()
            .with_vector("a<b & \"c\"", u.view())
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains("Name=\"a&lt;b &amp; &quot;c&quot;\""));
    }

    #[test]
    fn unwritable_path_is_an_io_error() {
        let m = mask();
        let err = VtiVolume::new(voxel(), m.view())
            .unwrap()
            .write(Path::new("/nonexistent-dir/sample.vti"))
            .unwrap_err();
        assert!(matches!(err, VizError::Io { .. }), "{err}");
    }
}
