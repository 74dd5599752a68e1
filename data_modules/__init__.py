"""One LightningDataModule per dataset."""
