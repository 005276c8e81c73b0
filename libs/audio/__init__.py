"""Audio feature extraction: BEATs (iter3+) features from audio or video files.

Layering: imports only ``libs.common``. Modules: ``fbank`` (Kaldi log-mel as BEATs computes it),
``beats_config`` / ``beats`` (the encoder and strict loading of the official checkpoint),
``media`` (reading, ffmpeg, mono, resampling to 16 kHz), ``extract`` (chunking, batching),
``folder`` (a folder of files -> .npy files or one .h5). See docs/feature_extraction.md.
"""
from .beats import BEATs, beats_from_checkpoint, load_beats, random_checkpoint
from .beats_config import ITER3_PLUS_AS2M, BEATsConfig, config_from_dict
from .extract import BatchRunner, extract_waves, plan_windows
from .fbank import beats_fbank, kaldi_fbank, normalize_fbank
from .folder import Summary, extract_folder
from .media import AudioError, read_audio, resample_to_16k

__all__ = ["BEATs", "BEATsConfig", "BatchRunner", "AudioError", "ITER3_PLUS_AS2M", "Summary",
           "beats_fbank", "beats_from_checkpoint", "config_from_dict", "extract_folder", "extract_waves",
           "kaldi_fbank", "load_beats", "normalize_fbank", "plan_windows", "random_checkpoint",
           "read_audio", "resample_to_16k"]
