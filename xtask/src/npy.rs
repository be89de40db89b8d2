//! Minimal NumPy `.npy` reading and writing (format versions 1-3, little-endian, C order):
//! token ids in, logits out. Errors name the file.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// A C-ordered array read from `.npy`.
pub struct NpyArray<T> {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<T>,
}

/// Reads an integer array (`<i8` or `<i4`) as i64.
pub fn read_ints(path: &Path) -> Result<NpyArray<i64>> {
    read(path, "int64 ('<i8') or int32 ('<i4')", |descr, body| match descr {
        "<i8" => Some(body.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()),
        "<i4" => {
            Some(body.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64).collect())
        }
        _ => None,
    })
}

/// Reads a float array (`<f4`).
pub fn read_f32(path: &Path) -> Result<NpyArray<f32>> {
    read(path, "float32 ('<f4')", |descr, body| {
        (descr == "<f4")
            .then(|| body.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
    })
}

/// Reads a file and converts its body with `convert`, which answers `None` for a dtype it does
/// not take. Checks that the body holds as many values as the header's shape promises.
fn read<T>(path: &Path, expected: &str, convert: impl FnOnce(&str, &[u8]) -> Option<Vec<T>>) -> Result<NpyArray<T>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let (descr, shape, body) = parse(&bytes).with_context(|| format!("{}: not a valid .npy file", path.display()))?;
    let Some(data) = convert(&descr, body) else {
        bail!("{}: dtype {descr:?}; expected {expected}", path.display());
    };
    let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if n != Some(data.len()) {
        let n = n.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
        bail!(
            "{}: truncated: the header promises {n} values of shape {shape:?}, the file holds {}",
            path.display(),
            data.len()
        );
    }
    Ok(NpyArray { shape, data })
}

/// Writes an f32 array (format version 1.0), through a temporary file and a rename.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let body: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(path, "<f4", shape, &body)
}

/// Writes an int64 array (format version 1.0), through a temporary file and a rename.
pub fn write_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    let body: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(path, "<i8", shape, &body)
}

fn write(path: &Path, descr: &str, shape: &[usize], body: &[u8]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_str = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    let tmp = path.with_extension("npy.tmp");
    std::fs::write(&tmp, &out).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

fn parse(bytes: &[u8]) -> Result<(String, Vec<usize>, &[u8])> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("missing the \\x93NUMPY magic");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => bail!("unsupported format version {v}"),
    };
    let header = bytes.get(start..start + header_len).context("header is cut short")?;
    let header = std::str::from_utf8(header).context("header is not text")?;
    let field = |key: &str| -> Result<&str> {
        let at = header.find(&format!("'{key}'")).with_context(|| format!("header has no '{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        Ok(rest.trim_start().trim_start_matches(':').trim_start())
    };
    if field("fortran_order")?.starts_with("True") {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let descr = field("descr")?;
    let descr = descr.trim_start_matches('\'').split('\'').next().unwrap_or_default().to_string();
    let shape = field("shape")?;
    let inner = shape.strip_prefix('(').and_then(|s| s.split(')').next()).context("malformed shape")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("malformed shape entry {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    Ok((descr, shape, &bytes[start + header_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("npy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_f32(&path, &[2, 3, 4], &data).unwrap();
        let back = read_f32(&path).unwrap();
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.data, data);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_f32(&path).err().unwrap().to_string();
        assert!(err.contains("truncated") && err.contains("a.npy"), "{err}");
        std::fs::write(&path, b"not numpy").unwrap();
        assert!(read_ints(&path).err().unwrap().to_string().contains("not a valid .npy"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shape_whose_size_overflows_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.npy");
        let side = 1usize << 40;
        write_i64(&path, &[side, side], &[1, 2, 3]).unwrap();
        let err = read_ints(&path).err().unwrap().to_string();
        assert!(err.contains("huge.npy") && err.contains("more than 2^64"), "{err}");
    }
}
