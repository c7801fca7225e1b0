"""Installs csl_ros the same way for ``colcon build`` (ament_python) and ``pip install .``."""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = "csl_ros"


def _files(pattern):
    return sorted(f for f in glob(pattern) if os.path.isfile(f))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    package_data={PACKAGE: ["py.typed", "ros/fastdds_large_images.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*")),
        (f"share/{PACKAGE}/config", _files("config/*")),
        (f"share/{PACKAGE}/models", _files("models/*")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy>=1.26,<3",
        "scipy>=1.11",
        "opencv-python-headless>=4.9",
        "pyyaml>=6",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "onnxruntime>=1.18",
    ],
    extras_require={
        # csl_ros.eval, csl-ros bag / evaluate / demo: rosbags, report figures, videos (the node needs none)
        "eval": [
            "matplotlib>=3.8",
            "imageio>=2.34",
            "imageio-ffmpeg>=0.5",
            "rosbags>=0.10",
        ],
        "ros": [
            "ros-rclpy",
            "ros-sensor-msgs",
            "ros-std-msgs",
            "ros-geometry-msgs",
            "ros-visualization-msgs",
            "ros-diagnostic-msgs",
            "ros-lifecycle-msgs",
            "ros-rmw-fastrtps-cpp",
        ],
        "tensorrt": ["torch-tensorrt==2.14.0"],
        # Hugging Face SegFormer / Mask2Former teachers and `csl-ros models` (huggingface_hub with it)
        "hf": ["transformers>=4.45"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "onnx>=1.16",
            "onnxscript>=0.1",
            "scikit-learn>=1.4",
            "transformers>=4.45",
        ],
    },
    zip_safe=True,
    maintainer="csl_ros maintainers",
    maintainer_email="dev@csl-ros.invalid",
    description="CSL road-obstacle / OOD segmentation for ROS 2, with a SMIYC rosbag evaluator.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "csl-ros = csl_ros.cli:main",
            "csl_node = csl_ros.ros.csl_node:main",
        ],
    },
)
