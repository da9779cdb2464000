"""The KL grader: a one-channel DenseNet-121 whose forward pass also yields Grad-CAM.

DenseNet's head is ReLU -> global average pool -> linear, so the gradient of the class score y_c with respect to
the last feature map F is W_c * 1[F > 0] / HW.  Grad-CAM's channel weights are the spatial mean of that gradient,
alpha_c = W_c * mean(1[F > 0]) / HW, and the map is ReLU(sum_k alpha_ck F_k): no backward pass, whole batch at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from node.analysis.familiarity import PREFIX as FAMILIARITY_PREFIX
from node.analysis.familiarity import Familiarity

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"


GROWTH, BOTTLENECK, STEM_CHANNELS, BLOCKS = 32, 4, 64, (6, 12, 24, 16)  # DenseNet-121


class DenseLayer(nn.Module):
    """BN-ReLU-conv 1x1, BN-ReLU-conv 3x3; its GROWTH new channels appended to its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(channels, BOTTLENECK * GROWTH, kernel_size=1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(BOTTLENECK * GROWTH), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(BOTTLENECK * GROWTH, GROWTH, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))], 1)


def densenet121_features() -> nn.Sequential:
    """torchvision's densenet121().features with a one-channel stem, module for module and name for name (its
    weights load as they are), without importing torchvision: its import alone holds 164 MB of RSS."""
    features = nn.Sequential()
    features.add_module("conv0", nn.Conv2d(1, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False))
    features.add_module("norm0", nn.BatchNorm2d(STEM_CHANNELS))
    features.add_module("relu0", nn.ReLU(inplace=True))
    features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    channels = STEM_CHANNELS
    for number, layers in enumerate(BLOCKS, start=1):
        block = nn.Sequential()
        for index in range(layers):
            block.add_module(f"denselayer{index + 1}", DenseLayer(channels + index * GROWTH))
        features.add_module(f"denseblock{number}", block)
        channels += layers * GROWTH
        if number < len(BLOCKS):
            features.add_module(f"transition{number}", nn.Sequential(OrderedDict([
                ("norm", nn.BatchNorm2d(channels)), ("relu", nn.ReLU(inplace=True)),
                ("conv", nn.Conv2d(channels, channels // 2, kernel_size=1, bias=False)),
                ("pool", nn.AvgPool2d(kernel_size=2, stride=2))])))
            channels //= 2
    features.add_module("norm5", nn.BatchNorm2d(channels))
    return features


class KneeGrader(nn.Module):
    """DenseNet-121 with a single-channel stem; parameter names (and initialisation) as torchvision's."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = densenet121_features()
        self.classifier = nn.Linear(self.features.norm5.num_features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not torchvision's in-place ReLU: the feature map must stay intact for Grad-CAM hooks.
        return self.classifier(F.relu(self.features(x)).mean((2, 3)))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B, classes), Grad-CAM of the top class (B, h, w) and the pooled features the head reads
        (B, channels), all float32."""
        feature_map = self.features(x).float()
        with torch.autocast(feature_map.device.type, enabled=False):
            weight = self.classifier.weight.float()
            pooled = F.relu(feature_map).mean((2, 3))
            logits = F.linear(pooled, weight, self.classifier.bias.float())
            spatial = feature_map.shape[2] * feature_map.shape[3]
            alpha = weight[logits.argmax(1)] * (feature_map > 0).float().mean((2, 3)) / spatial
            cam = F.relu(torch.einsum("bk,bkhw->bhw", alpha, feature_map))
        return logits, cam, pooled


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it fast (CUDA; CPUs with AVX512-BF16 or AMX, about 2x training and 2-5x
    inference over fp32), else None: fp32.  Training, calibration and the node all infer through this."""
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Asked once per process: autocast() runs for every batch."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, fp32: bool = False) -> torch.autocast:
    """The node's precision on `device`, or plain fp32 when asked (to measure what bf16 changes)."""
    dtype = None if fp32 else autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def standardize(images: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean, unit variance: the model never depends on the radiograph's window."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True)
    return (images - mean) / (std + 1e-6)


def model_inputs(crops: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(N, H, W) display-space crops in [0, 1] (or uint8) -> standardized (N, 1, size, size) on the device."""
    if crops.shape[1:] != (size, size):
        crops = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])
    batch = torch.from_numpy(np.ascontiguousarray(crops)).to(device, torch.float32)
    return standardize(batch[:, None]).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Outputs:
    logits: np.ndarray  # (N, classes)
    cams: np.ndarray  # (N, h, w): Grad-CAM of the top class
    features: np.ndarray  # (N, channels): what the linear head reads


@torch.inference_mode()
def forward_in_batches(module: KneeGrader, crops: np.ndarray, size: int, device: torch.device,
                       batch_size: int = 64, fp32: bool = False) -> Outputs:
    """The model's outputs for display-space crops, module in eval mode, at the node's precision (`fp32`: at fp32
    whatever the hardware)."""
    module.eval()
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(crops), batch_size):
        with autocast(device, fp32):
            outputs = module.forward_with_cam(model_inputs(crops[start:start + batch_size], size, device))
        parts.append(tuple(t.cpu().numpy() for t in outputs))
    return Outputs(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@dataclass(frozen=True)
class ModelSpec:
    """What `model.json` records beside the weights; everything inference needs to reproduce training."""

    name: str
    version: str
    input_size: int
    class_names: tuple[str, ...]
    temperature: float
    field_mm: float
    attention_threshold: float
    confidence_threshold: float
    familiarity_threshold: float  # feature distance beyond which a crop is refused (node.analysis.familiarity)
    sha256: str = ""
    architecture: str = "densenet121"
    normalization: str = "per-image standardization"

    @classmethod
    def read(cls, path: Path) -> ModelSpec:
        return cls.parse(json.loads(path.read_text()), str(path))

    @classmethod
    def parse(cls, raw: dict, where: str) -> ModelSpec:
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in raw]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw} | {
            "class_names": tuple(raw["class_names"])})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_model(module: KneeGrader, spec: ModelSpec, familiarity: Familiarity, out_dir: Path) -> ModelSpec:
    """Write the network's fp16 weights and the familiarity statistics as one safetensors file, and `model.json`
    (with that file's sha256); returns the spec as written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in module.state_dict().items()}
    weights = out_dir / WEIGHTS_FILE
    save_file(state | familiarity.tensors(), str(weights), metadata={"name": spec.name, "version": spec.version})
    written = ModelSpec(**{**asdict(spec), "sha256": sha256_of(weights)})
    written.write(out_dir / SPEC_FILE)
    return written


def load_model(weights: Path) -> tuple[KneeGrader, Familiarity | None]:
    """The network (fp32, on the CPU) and the familiarity statistics (None before they were fitted) of a weights
    file written by save_model."""
    state = load_file(str(weights))
    network = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
               if not k.startswith(FAMILIARITY_PREFIX)}
    module = KneeGrader(num_classes=network["classifier.weight"].shape[0])
    module.load_state_dict(network)
    return module, Familiarity.from_tensors(state) if f"{FAMILIARITY_PREFIX}means" in state else None


class Grader:
    """A loaded model on its device; turns display-space crops into calibrated probabilities and CAMs."""

    def __init__(self, model_dir: Path, device: str = "auto", threads: int | None = None) -> None:
        spec_path, weights = model_dir / SPEC_FILE, model_dir / WEIGHTS_FILE
        for path in (spec_path, weights):
            if not path.is_file():
                raise FileNotFoundError(f"model: {path} not found")
        self.spec = ModelSpec.read(spec_path)
        digest = sha256_of(weights)
        if digest != self.spec.sha256:
            raise ValueError(f"model: {weights} sha256 {digest[:12]}... does not match model.json")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        module, familiarity = load_model(weights)
        if familiarity is None:
            raise ValueError(f"model: {weights} has no familiarity statistics (fit them: knee-node calibrate)")
        self.familiarity = familiarity
        self.module = module.to(self.device, memory_format=torch.channels_last).eval()

    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated class probabilities (N, classes), Grad-CAM of the top class (N, h, w) and each crop's
        familiarity distance (N,)."""
        outputs = forward_in_batches(self.module, crops, self.spec.input_size, self.device)
        return (softmax(outputs.logits, self.spec.temperature), outputs.cams,
                self.familiarity.distance(outputs.features))
