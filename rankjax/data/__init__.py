"""Datasets in rankjax's fixed-width binary layout, their generators, and the Grain pipeline."""
