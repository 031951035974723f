"""The Vagrantfile a lab boots from, rendered from the model: pure, no subprocess."""
