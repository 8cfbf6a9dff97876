//! Tensors on the wire: `pb::Tensor` is a shape, a dtype and little-endian bytes. Everything read from the
//! network is checked here (dtype, shape, length, finite values) before anyone computes with it.

use crate::pb;

/// Why a tensor from the network is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{name}: missing")]
    Missing { name: String },
    #[error("{name}: dtype {found} where {expected} was expected")]
    DType { name: String, found: String, expected: &'static str },
    #[error("{name}: shape {found:?} where {expected:?} was expected")]
    Shape { name: String, found: Vec<u64>, expected: Vec<usize> },
    #[error("{name}: {found} bytes of data for shape {shape:?}, which needs {needed}")]
    Length { name: String, found: usize, shape: Vec<u64>, needed: usize },
    #[error("{name}: value {index} is not finite")]
    NotFinite { name: String, index: usize },
}

/// Encodes f32 values of `shape`.
pub fn f32_tensor(shape: &[usize], values: &[f32]) -> pb::Tensor {
    debug_assert_eq!(shape.iter().product::<usize>(), values.len());
    let mut data = vec![0u8; values.len() * 4];
    for (out, v) in data.chunks_exact_mut(4).zip(values) {
        out.copy_from_slice(&v.to_le_bytes());
    }
    pb::Tensor { shape: shape.iter().map(|&d| d as u64).collect(), dtype: pb::ElementType::F32 as i32, data }
}

/// Encodes bytes of `shape`.
pub fn u8_tensor(shape: &[usize], values: Vec<u8>) -> pb::Tensor {
    debug_assert_eq!(shape.iter().product::<usize>(), values.len());
    pb::Tensor { shape: shape.iter().map(|&d| d as u64).collect(), dtype: pb::ElementType::U8 as i32, data: values }
}

/// Decodes an f32 tensor named `name`, of exactly `expected` shape when given; every value must be finite.
/// Returns the shape and the values.
pub fn read_f32(
    name: &str,
    tensor: Option<&pb::Tensor>,
    expected: Option<&[usize]>,
) -> Result<(Vec<usize>, Vec<f32>), WireError> {
    let tensor = tensor.ok_or_else(|| WireError::Missing { name: name.into() })?;
    let shape = check(name, tensor, pb::ElementType::F32, "f32", 4, expected)?;
    let mut values = Vec::with_capacity(tensor.data.len() / 4);
    for (index, chunk) in tensor.data.chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if !v.is_finite() {
            return Err(WireError::NotFinite { name: name.into(), index });
        }
        values.push(v);
    }
    Ok((shape, values))
}

/// Decodes a u8 tensor named `name`, of exactly `expected` shape when given.
pub fn read_u8(
    name: &str,
    tensor: Option<pb::Tensor>,
    expected: Option<&[usize]>,
) -> Result<(Vec<usize>, Vec<u8>), WireError> {
    let tensor = tensor.ok_or_else(|| WireError::Missing { name: name.into() })?;
    let shape = check(name, &tensor, pb::ElementType::U8, "u8", 1, expected)?;
    Ok((shape, tensor.data))
}

fn check(
    name: &str,
    tensor: &pb::Tensor,
    dtype: pb::ElementType,
    dtype_name: &'static str,
    elem: usize,
    expected: Option<&[usize]>,
) -> Result<Vec<usize>, WireError> {
    if tensor.dtype != dtype as i32 {
        let found = pb::ElementType::try_from(tensor.dtype)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| format!("#{}", tensor.dtype));
        return Err(WireError::DType { name: name.into(), found, expected: dtype_name });
    }
    let shape_err = || WireError::Shape {
        name: name.into(),
        found: tensor.shape.clone(),
        expected: expected.map(<[usize]>::to_vec).unwrap_or_default(),
    };
    if let Some(expected) = expected {
        if tensor.shape.len() != expected.len() || tensor.shape.iter().zip(expected).any(|(&a, &b)| a != b as u64) {
            return Err(shape_err());
        }
    }
    let shape: Vec<usize> =
        tensor.shape.iter().map(|&d| usize::try_from(d).map_err(|_| shape_err())).collect::<Result<_, _>>()?;
    let needed = shape.iter().try_fold(elem, |acc, &d| acc.checked_mul(d)).ok_or_else(shape_err)?;
    if tensor.data.len() != needed {
        return Err(WireError::Length {
            name: name.into(),
            found: tensor.data.len(),
            shape: tensor.shape.clone(),
            needed,
        });
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trips() {
        let t = f32_tensor(&[2, 3], &[0.0, 1.5, -2.0, 3.25, 1e-30, -0.0]);
        let (shape, values) = read_f32("x", Some(&t), Some(&[2, 3])).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            [0.0f32, 1.5, -2.0, 3.25, 1e-30, -0.0].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn malformed_tensors_are_refused_with_their_name() {
        let good = f32_tensor(&[2, 2], &[1.0; 4]);
        assert!(matches!(read_f32("out", None, None), Err(WireError::Missing { .. })));
        assert!(matches!(read_f32("out", Some(&good), Some(&[4])), Err(WireError::Shape { .. })));
        let mut short = good.clone();
        short.data.pop();
        assert!(matches!(read_f32("out", Some(&short), None), Err(WireError::Length { .. })));
        let mut nan = good.clone();
        nan.data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(read_f32("out", Some(&nan), None), Err(WireError::NotFinite { name: "out".into(), index: 1 }));
        let bytes = u8_tensor(&[4], vec![1, 2, 3, 4]);
        let err = read_f32("out", Some(&bytes), None).unwrap_err();
        assert!(err.to_string().starts_with("out: dtype"), "{err}");
        let mut huge = good.clone();
        huge.shape = vec![u64::MAX, u64::MAX];
        assert!(read_f32("out", Some(&huge), None).is_err());
        let mut unknown = good;
        unknown.dtype = 99;
        assert!(read_f32("out", Some(&unknown), None).unwrap_err().to_string().contains("#99"));
    }

    #[test]
    fn u8_round_trips() {
        let (shape, data) =
            read_u8("frames", Some(u8_tensor(&[1, 2, 2, 3], vec![7; 12])), Some(&[1, 2, 2, 3])).unwrap();
        assert_eq!((shape, data), (vec![1, 2, 2, 3], vec![7; 12]));
    }
}
