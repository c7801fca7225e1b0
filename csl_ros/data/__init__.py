"""Data: the synthroad scene generator, dataset writers for the real layouts, and previews.

numpy/OpenCV only (no torch, no rclpy), so the generator runs anywhere.
"""
