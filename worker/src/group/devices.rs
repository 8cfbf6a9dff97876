//! The devices a worker owns (`--devices cpu:4`, `--devices cuda:0,1,2,3`) and how they form shard groups
//! of a tensor-parallel degree (`--tp 2`: consecutive pairs).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::model::ModelError;

/// One device a rank runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// A CPU rank: ranks on the CPU share its cores (each rank's matrix products use all of them).
    Cpu(usize),
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Cpu(i) => write!(f, "cpu:{i}"),
            DeviceName::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceName {
    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceName::Cuda(_))
    }

    /// Opens the device for this thread's use.
    pub fn open(self) -> Result<Device, ModelError> {
        match self {
            DeviceName::Cpu(_) => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            DeviceName::Cuda(ordinal) => Device::new_cuda(ordinal)
                .map_err(|e| ModelError::input("devices", format!("cuda:{ordinal} cannot be opened: {e}"))),
            #[cfg(not(feature = "cuda"))]
            DeviceName::Cuda(ordinal) => Err(ModelError::input(
                "devices",
                format!(
                    "cuda:{ordinal}: this build has no CUDA support (build with --features cuda: tools/cuda/build.sh)"
                ),
            )),
        }
    }
}

/// A list of devices: `cpu`, `cpu:N` (N CPU ranks), `cuda:0,1,2,3` or `cuda:0,cuda:1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceName>);

impl FromStr for DeviceList {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let bad = |why: &str| format!("--devices {spec:?}: {why} (expected cpu, cpu:N or cuda:0,1,...)");
        if spec == "cpu" {
            return Ok(DeviceList(vec![DeviceName::Cpu(0)]));
        }
        if let Some(count) = spec.strip_prefix("cpu:") {
            let n: usize = count.parse().map_err(|_| bad("the CPU rank count is not a number"))?;
            if n == 0 || n > 64 {
                return Err(bad("between 1 and 64 CPU ranks"));
            }
            return Ok(DeviceList((0..n).map(DeviceName::Cpu).collect()));
        }
        let Some(list) = spec.strip_prefix("cuda:") else {
            return Err(bad("unknown device kind"));
        };
        let mut devices = Vec::new();
        for item in list.split(',') {
            let ordinal = item.trim().trim_start_matches("cuda:");
            let ordinal: usize = ordinal.parse().map_err(|_| bad(&format!("`{item}` is not a device ordinal")))?;
            let device = DeviceName::Cuda(ordinal);
            if devices.contains(&device) {
                return Err(bad(&format!("cuda:{ordinal} is listed twice")));
            }
            devices.push(device);
        }
        Ok(DeviceList(devices))
    }
}

/// Cuts `devices` into groups of `tp` consecutive devices.
pub fn shard_groups(devices: &[DeviceName], tp: usize) -> Result<Vec<Vec<DeviceName>>, ModelError> {
    if tp == 0 || devices.is_empty() || !devices.len().is_multiple_of(tp) {
        return Err(ModelError::input(
            "tp",
            format!("tensor-parallel degree {tp} does not divide the worker's {} devices", devices.len()),
        ));
    }
    Ok(devices.chunks(tp).map(<[DeviceName]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_and_form_groups() {
        let cpu: DeviceList = "cpu:4".parse().unwrap();
        assert_eq!(cpu.0.len(), 4);
        let groups = shard_groups(&cpu.0, 2).unwrap();
        assert_eq!(
            groups,
            vec![vec![DeviceName::Cpu(0), DeviceName::Cpu(1)], vec![DeviceName::Cpu(2), DeviceName::Cpu(3)]]
        );
        let cuda: DeviceList = "cuda:0,1,2,3".parse().unwrap();
        assert_eq!(shard_groups(&cuda.0, 4).unwrap().len(), 1);
        assert_eq!(shard_groups(&cuda.0, 1).unwrap().len(), 4);
        assert_eq!("cuda:0,cuda:1".parse::<DeviceList>().unwrap().0, vec![DeviceName::Cuda(0), DeviceName::Cuda(1)]);
        assert_eq!("cpu".parse::<DeviceList>().unwrap().0, vec![DeviceName::Cpu(0)]);
        for bad in ["gpu:0", "cpu:x", "cpu:0", "cuda:0,0", "cuda:a"] {
            assert!(bad.parse::<DeviceList>().unwrap_err().contains("--devices"), "{bad}");
        }
        let err = shard_groups(&cuda.0, 3).unwrap_err().to_string();
        assert!(err.contains("degree 3 does not divide the worker's 4 devices"), "{err}");
    }
}
