# Source on the device, in the repository root, with .device carried (scripts/device_bundle.sh):
#   source scripts/device_setup.sh
# Unpacks the carried packages into /tmp/site and puts them and the backend on PYTHONPATH.
mkdir -p /tmp/site
tar -C /tmp/site -xJf .device/simpleitk.tar.xz
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD/SpineCTSegmentation${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import SimpleITK, monai, slicerio, torch, spinect; print('device setup: torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| SimpleITK', SimpleITK.Version_VersionString(), '| monai', monai.__version__)"
