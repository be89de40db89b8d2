//! Reading and writing safetensors files, single or sharded, in f32, f16 or bf16.
//!
//! Files are memory-mapped and validated when opened (a truncated file fails there, by name).
//! Tensors are converted to f32 on read.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors, View};

use super::CheckpointError;

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Element type of stored weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            other => Err(format!("unknown dtype {other:?}: expected f32, f16 or bf16")),
        }
    }
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// The tensors of one checkpoint, across one or more safetensors files.
pub struct SafetensorsFiles {
    /// The file that names the tensors: the index of a sharded checkpoint, or the single file.
    origin: PathBuf,
    files: Vec<MappedFile>,
    location: HashMap<String, usize>,
}

impl SafetensorsFiles {
    /// Opens the weights of an HF checkpoint directory: `model.safetensors`, or the shards listed
    /// in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self, CheckpointError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.is_file() {
            return Self::open_file(&single);
        }
        if !index.is_file() {
            return Err(CheckpointError::invalid(dir, format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory")));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| CheckpointError::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::invalid(&index, format!("not valid JSON: {e}")))?;
        let weight_map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CheckpointError::invalid(&index, "no `weight_map` object"))?;
        let mut shard_names: Vec<String> = Vec::new();
        let mut wanted: Vec<(String, String)> = Vec::new();
        for (tensor, file) in weight_map {
            let file = file.as_str().ok_or_else(|| {
                CheckpointError::invalid(&index, format!("weight_map entry `{tensor}` is not a file name"))
            })?;
            // Shards live in the checkpoint's folder: no absolute paths, no `..`.
            let inside = Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside || file.is_empty() {
                return Err(CheckpointError::invalid(
                    &index,
                    format!("weight_map entry `{tensor}` names {file:?}, which lies outside the checkpoint's folder"),
                ));
            }
            if !shard_names.iter().any(|s| s == file) {
                shard_names.push(file.to_string());
            }
            wanted.push((tensor.clone(), file.to_string()));
        }
        let mut files = Vec::new();
        for name in &shard_names {
            files.push(MappedFile::open(&dir.join(name))?);
        }
        let mut location = HashMap::new();
        for (tensor, file) in wanted {
            let i = shard_names.iter().position(|s| *s == file).expect("shard listed above");
            if files[i].metadata.info(&tensor).is_none() {
                return Err(CheckpointError::invalid(
                    &files[i].path,
                    format!("{INDEX_FILE} places tensor `{tensor}` in this shard, but the shard does not hold it"),
                ));
            }
            location.insert(tensor, i);
        }
        Ok(Self { origin: index, files, location })
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self, CheckpointError> {
        let file = MappedFile::open(path)?;
        let location = file.metadata.tensors().into_keys().map(|name| (name, 0)).collect();
        Ok(Self { origin: path.to_path_buf(), files: vec![file], location })
    }

    /// The index file or the single file: the place to name in errors about the whole set.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.location.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        let file = &self.files[*self.location.get(name)?];
        file.metadata.info(name).map(|i| i.shape.as_slice())
    }

    /// Reads a tensor as f32, checking its shape.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let Some(&i) = self.location.get(name) else {
            return Err(CheckpointError::invalid(&self.origin, format!("missing tensor `{name}`")));
        };
        let file = &self.files[i];
        let info = file.metadata.info(name).expect("location comes from metadata");
        if info.shape != shape {
            return Err(CheckpointError::invalid(
                &file.path,
                format!("tensor `{name}` has shape {:?}, the config expects {shape:?}", info.shape),
            ));
        }
        let start = 8 + file.header_len + info.data_offsets.0;
        let bytes = &file.mmap[start..8 + file.header_len + info.data_offsets.1];
        let values = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(CheckpointError::invalid(
                    &file.path,
                    format!("tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 weights are supported"),
                ));
            }
        };
        Ok(values)
    }

    /// Reads a tensor onto a device, checking its shape.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, CheckpointError> {
        let values = self.read_f32(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint modified while we read it is the user's race,
        // as with every safetensors loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            let why = diagnose(&mmap).unwrap_or_else(|| e.to_string());
            CheckpointError::invalid(path, format!("not a valid safetensors file (truncated or corrupt?): {why}"))
        })?;
        Ok(Self { path: path.to_path_buf(), mmap, header_len, metadata })
    }
}

/// Says which tensor of a safetensors file that does not validate is at fault, where the header
/// at least parses: a span that disagrees with its dtype and shape, one past the end of the data,
/// or two that overlap (both named). The safetensors crate names only the tensor after a bad one
/// in offset order, which is another tensor.
fn diagnose(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = (bytes.len() - 8 - n) as u128;
    let mut spans = Vec::new();
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets: Vec<u128> =
            info.get("data_offsets")?.as_array()?.iter().map(|v| v.as_u64().map(u128::from)).collect::<Option<_>>()?;
        let [start, end] = offsets[..] else {
            return Some(format!("tensor `{name}`: `data_offsets` must hold two numbers"));
        };
        let numel =
            info.get("shape")?.as_array()?.iter().try_fold(1u128, |n, d| n.checked_mul(u128::from(d.as_u64()?)))?;
        let size: u128 = match info.get("dtype")?.as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        if end < start {
            return Some(format!("tensor `{name}`: its data ends (byte {end}) before it begins (byte {start})"));
        }
        let needed = numel.checked_mul(size)?;
        if end - start != needed {
            return Some(format!(
                "tensor `{name}`: its span holds {} bytes, but its shape and dtype need {needed}",
                end - start
            ));
        }
        if end > data_len {
            return Some(format!(
                "tensor `{name}`: its data (bytes {start}..{end}) runs past the file's {data_len} bytes"
            ));
        }
        spans.push((start, end, name));
    }
    spans.sort();
    spans.windows(2).find(|w| w[1].0 < w[0].1).map(|w| {
        format!(
            "tensors `{}` (bytes {}..{}) and `{}` (bytes {}..{}) overlap",
            w[0].2, w[0].0, w[0].1, w[1].2, w[1].0, w[1].1
        )
    })
}

/// One named tensor to write: f32 values, converted to the file's dtype on write.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// State-dict name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(t: &NamedTensor, dtype: WeightDtype) -> Encoded {
    let (st, bytes): (Dtype, Vec<u8>) = match dtype {
        WeightDtype::F32 => (Dtype::F32, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        WeightDtype::F16 => (Dtype::F16, t.values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
        WeightDtype::BF16 => {
            (Dtype::BF16, t.values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect())
        }
    };
    Encoded { dtype: st, shape: t.shape.clone(), bytes }
}

/// Writes `tensors` to `dir` as `model.safetensors`, or as shards of at most `max_shard_bytes`
/// with an index when they do not fit one. Every file is written to a temporary name first,
/// then renamed, so no reader ever sees a half-written file.
pub fn write_checkpoint_weights(
    dir: &Path,
    tensors: &[NamedTensor],
    dtype: WeightDtype,
    max_shard_bytes: Option<usize>,
) -> Result<(), CheckpointError> {
    let encoded: Vec<(&str, Encoded)> = tensors.iter().map(|t| (t.name.as_str(), encode(t, dtype))).collect();
    let total: usize = encoded.iter().map(|(_, e)| e.bytes.len()).sum();
    let limit = max_shard_bytes.unwrap_or(usize::MAX).max(1);
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, (_, e)) in encoded.iter().enumerate() {
        if size > 0 && size + e.bytes.len() > limit {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += e.bytes.len();
    }
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    if shards.len() == 1 {
        let path = dir.join(SINGLE_FILE);
        let views = encoded.iter().map(|(n, e)| (*n, e));
        write_atomic(&path, |tmp| safetensors::serialize_to_file(views, Some(metadata.clone()), tmp))?;
        return remove_stale_weights(dir, &[SINGLE_FILE]);
    }
    let mut weight_map = BTreeMap::new();
    let n = shards.len();
    for (k, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let views = shard.iter().map(|&i| (encoded[i].0, &encoded[i].1));
        write_atomic(&dir.join(&file), |tmp| safetensors::serialize_to_file(views, Some(metadata.clone()), tmp))?;
        for &i in shard {
            weight_map.insert(encoded[i].0.to_string(), file.clone());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let text = serde_json::to_string_pretty(&index).expect("JSON of strings");
    write_atomic(&dir.join(INDEX_FILE), |tmp| std::fs::write(tmp, &text))?;
    let mut written: Vec<String> = weight_map.into_values().collect();
    written.push(INDEX_FILE.to_string());
    let written: Vec<&str> = written.iter().map(String::as_str).collect();
    remove_stale_weights(dir, &written)
}

/// Removes the weight files of an earlier checkpoint in `dir` that the one just written does not
/// use: a `model.safetensors` beside a new index (the loader would prefer it), or an index and
/// shards beside a new single file. Only names this layout uses are touched.
fn remove_stale_weights(dir: &Path, written: &[&str]) -> Result<(), CheckpointError> {
    let ours = |name: &str| {
        name == SINGLE_FILE
            || name == INDEX_FILE
            || name.strip_prefix("model-").and_then(|r| r.strip_suffix(".safetensors")).is_some_and(|r| {
                let (a, b) = r.split_once("-of-").unwrap_or_default();
                a.len() == 5 && b.len() == 5 && (a.to_string() + b).bytes().all(|c| c.is_ascii_digit())
            })
    };
    let list = std::fs::read_dir(dir).map_err(|e| CheckpointError::io(dir, e))?;
    for entry in list.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ours(&name) && !written.contains(&name.as_str()) {
            std::fs::remove_file(entry.path()).map_err(|e| CheckpointError::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Runs `write` on a temporary path beside `path`, then renames it into place.
pub(crate) fn write_atomic<E: std::fmt::Display>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), CheckpointError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write(&tmp).map_err(|e| CheckpointError::invalid(path, format!("could not write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| CheckpointError::io(path, e))
}
