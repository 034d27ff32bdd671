"""batchgen: bulk image-to-image remixing with manifests, a resumable ledger and dry-run costs."""

__version__ = "0.1.0"
